//! `vidgen::train` end to end on a small Wan-architecture folder: the loss falls when
//! overfitting two clips, a resumed run equals an uninterrupted one bit for bit, every weight
//! receives a gradient (a fused op without a backward pass would silently freeze the layers
//! before it), and bad runs fail with errors that say what to fix.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use vidgen::families::wan::init::write_random_model;
use vidgen::families::wan::presets::preset;
use vidgen::train::{TrainConfig, Trainer};

/// A `tiny-world`-architecture folder with a 2-layer DiT (quick to train in a test).
fn small_model(dir: &Path) {
    let mut p = preset("tiny-world").unwrap();
    p.transformer.num_layers = 2;
    write_random_model(dir, &p, 3).unwrap();
}

fn config(model: &Path, out: &Path, part: &str, steps: usize, extra: &str) -> TrainConfig {
    let text = format!(
        r#"
model = "{}"
out = "{}"
part = "{part}"
steps = {steps}
batch_size = 2
checkpoint_every = 1000
log_every = 1000
{extra}
[data]
buckets = [[5, 32, 32]]
num_clips = 2
caption_dropout = 0.0
[optim]
lr = 3e-3
warmup = 3
ema_decay = 0.9
"#,
        model.display(),
        out.display()
    );
    TrainConfig::from_toml(&text).unwrap()
}

fn mean(xs: &[(usize, f64)]) -> f64 {
    xs.iter().map(|p| p.1).sum::<f64>() / xs.len() as f64
}

fn weights_equal(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> bool {
    a.len() == b.len()
        && a.iter().all(|(name, t)| {
            let u = &b[name];
            let diff = (t - u).unwrap().abs().unwrap().max_all().unwrap();
            diff.to_scalar::<f32>().unwrap() == 0.0
        })
}

#[test]
fn overfitting_two_clips_lowers_both_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    small_model(&model);

    // the VAE: reconstruction of two clips
    let cfg = config(&model, &tmp.path().join("vae"), "vae", 30, "");
    let mut vae = Trainer::new(cfg, false).unwrap();
    for _ in 0..30 {
        vae.step().unwrap();
    }
    let (first, last) = (mean(&vae.history[..5]), mean(&vae.history[25..]));
    assert!(last < 0.5 * first, "VAE loss {first:.4} -> {last:.4}");
    vae.save_checkpoint().unwrap();

    // the DiT on the VAE just trained: velocity loss (noisy: random times each step)
    let cfg = config(&model, &tmp.path().join("dit"), "dit", 60, "");
    let mut dit = Trainer::new(cfg, false).unwrap();
    for _ in 0..60 {
        dit.step().unwrap();
    }
    let (first, last) = (mean(&dit.history[..10]), mean(&dit.history[50..]));
    assert!(last < 0.7 * first, "DiT loss {first:.4} -> {last:.4}");
    // the export is a model folder the pipeline loads
    dit.save_checkpoint().unwrap();
    dit.write_loss_curve().unwrap();
    assert!(tmp.path().join("dit/loss.png").is_file());
    assert_generates(&model);
}

/// The pipeline loads `model` and makes a 5-frame 32x32 clip with it.
fn assert_generates(model: &Path) {
    let mut pipe = vidgen::pipeline::load(model, Default::default()).unwrap();
    let req = vidgen::pipeline::GenerateRequest {
        prompt: "a red ball bounces on the floor".into(),
        num_frames: Some(5),
        height: Some(32),
        width: Some(32),
        num_inference_steps: Some(2),
        ..Default::default()
    };
    let out = pipe.generate(&req, &mut |_| {}).unwrap();
    assert_eq!(out.frames.dims(), &[5, 32, 32, 3]);
}

#[test]
fn resuming_gives_the_same_weights_as_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    small_model(&model);
    // a little caption dropout, word noise and accumulation, so the data plan matters
    let extra = "grad_accum = 2";
    // 40 clips: three encode groups (16, 16, 8); the resumed run encodes them again, at other
    // steps than the uninterrupted one
    let config = |out: &Path| {
        let mut cfg = config(&model, out, "dit", 6, extra);
        cfg.data.num_clips = 40;
        cfg.data.word_noise = 0.5;
        cfg
    };
    let whole = tmp.path().join("whole");
    let mut a = Trainer::new(config(&whole), false).unwrap();
    for _ in 0..6 {
        a.step().unwrap();
    }

    let split = tmp.path().join("split");
    let mut b = Trainer::new(config(&split), false).unwrap();
    for _ in 0..3 {
        b.step().unwrap();
    }
    b.save_checkpoint().unwrap();
    drop(b);
    // a crash while writing the next checkpoint leaves a temporary folder behind
    std::fs::create_dir_all(split.join("checkpoints/.step-000005.tmp-1")).unwrap();
    let err = Trainer::new(config(&split), false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
    let mut b = Trainer::new(config(&split), true).unwrap();
    assert_eq!(b.steps_done(), 3);
    for _ in 0..3 {
        b.step().unwrap();
    }
    assert!(weights_equal(&a.export_weights(), &b.export_weights()));
    assert_eq!(a.history, b.history);
}

fn assert_every_weight_has_a_gradient(
    map: &candle_nn::VarMap,
    grads: &candle_core::backprop::GradStore,
) {
    for (name, var) in map.data().lock().unwrap().iter() {
        let norm = grads.get(var.as_tensor()).map(|g| {
            let sum = g.abs().unwrap().sum_all().unwrap();
            sum.to_scalar::<f32>().unwrap()
        });
        assert!(norm.is_some_and(|n| n > 0.0), "no gradient reaches {name}");
    }
}

#[test]
fn every_transformer_and_vae_weight_gets_a_gradient() {
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};
    use vidgen::families::wan::transformer::WanTransformer3D;
    use vidgen::families::wan::vae::AutoencoderKlWan;

    let p = preset("tiny-world").unwrap();
    let dev = Device::Cpu;
    let mut rng = vidgen::noise::NoiseRng::new(0);
    let map: VarMap = vidgen::families::wan::init::random_weights(&mut rng, DType::F32, |vb| {
        WanTransformer3D::new(&p.transformer, vb).map(|_| ())
    })
    .unwrap();
    let dit = WanTransformer3D::new(
        &p.transformer,
        VarBuilder::from_varmap(&map, DType::F32, &dev),
    )
    .unwrap();
    let x = Tensor::randn(0f32, 1., (2, 8, 2, 4, 6), &dev).unwrap();
    let t = Tensor::new(&[300f32, 700.], &dev).unwrap();
    let text = Tensor::randn(0f32, 1., (2, 5, 64), &dev).unwrap();
    let grads = dit
        .forward(&x, &t, &text)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_every_weight_has_a_gradient(&map, &grads.backward().unwrap());

    let map: VarMap = vidgen::families::wan::init::random_weights(&mut rng, DType::F32, |vb| {
        AutoencoderKlWan::new(&p.vae, vb).map(|_| ())
    })
    .unwrap();
    let vae =
        AutoencoderKlWan::new(&p.vae, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
    let video = Tensor::randn(0f32, 0.5, (1, 3, 5, 16, 16), &dev).unwrap();
    let loss = vae
        .decode(&vae.encode(&video).unwrap().mean)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_every_weight_has_a_gradient(&map, &loss.backward().unwrap());
}

/// The weights of one safetensors file.
fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap()
}

#[test]
fn a_trained_text_encoder_learns_resumes_and_is_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    small_model(&model);
    let text_file = model.join("text_encoder/model.safetensors");
    let before = load(&text_file);
    let config = |out: &Path| {
        let mut cfg = config(&model, out, "dit", 4, "");
        cfg.dit.train_text_encoder = true;
        cfg.optim.weight_decay = 0.0; // so a weight that moved had a gradient
        cfg
    };
    let whole = tmp.path().join("whole");
    let mut a = Trainer::new(config(&whole), false).unwrap();
    for _ in 0..4 {
        a.step().unwrap();
    }
    let trained = a.export_weights();
    let text_names: Vec<&String> = trained
        .keys()
        .filter(|n| n.starts_with("text_encoder."))
        .collect();
    assert_eq!(
        text_names.len(),
        before.len(),
        "every encoder weight is trained"
    );

    // its own learning rate: Adam's first update is ±lr per element, so 10x the rate moves
    // the encoder 10x as far in one step, and the DiT's weights as far as before
    let first_step = |scale: f64, out: &str| {
        let mut cfg = config(&tmp.path().join(out));
        cfg.dit.text_encoder_lr_scale = scale;
        // (AdaLN-Zero would zero the output projection, and with it the first step's gradient
        // reaching the encoder)
        cfg.dit.zero_init = false;
        let mut run = Trainer::new(cfg, false).unwrap();
        run.step().unwrap();
        run.export_weights()
    };
    let (one, ten) = (first_step(1.0, "lr1"), first_step(10.0, "lr10"));
    let moved = |w: &HashMap<String, Tensor>, name: &str, start: &Tensor| {
        let d = (&w[name] - start)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap();
        d.to_scalar::<f32>().unwrap()
    };
    let q = "encoder.block.0.layer.0.SelfAttention.q.weight";
    let text_ratio = moved(&ten, &format!("text_encoder.{q}"), &before[q])
        / moved(&one, &format!("text_encoder.{q}"), &before[q]);
    assert!(
        (9.0..11.0).contains(&text_ratio),
        "text encoder moved {text_ratio}x"
    );
    let dit = load(&model.join("transformer/diffusion_pytorch_model.safetensors"));
    let name = "proj_out.weight";
    assert_eq!(moved(&ten, name, &dit[name]), moved(&one, name, &dit[name]));

    // a resumed run trains the encoder to the same bits
    let split = tmp.path().join("split");
    let mut b = Trainer::new(config(&split), false).unwrap();
    for _ in 0..2 {
        b.step().unwrap();
    }
    b.save_checkpoint().unwrap();
    drop(b);
    let mut b = Trainer::new(config(&split), true).unwrap();
    for _ in 0..2 {
        b.step().unwrap();
    }
    assert!(weights_equal(&trained, &b.export_weights()));

    // the export writes the encoder into the model folder under its own names: every weight
    // moved (the position-bias table and the embedding included), and the folder still loads
    a.save_checkpoint().unwrap();
    let after = load(&text_file);
    assert_eq!(
        after.keys().collect::<std::collections::BTreeSet<_>>(),
        before.keys().collect()
    );
    for (name, t) in &after {
        let moved = (t - &before[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(
            moved.to_scalar::<f32>().unwrap() > 0.0,
            "{name} did not train"
        );
    }
    let transformer = load(&model.join("transformer/diffusion_pytorch_model.safetensors"));
    assert!(transformer.keys().all(|n| !n.starts_with("text_encoder")));
    assert_generates(&model);
}

#[test]
fn bad_runs_say_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let out = tmp.path().join("out");
    // no model folder
    let err = Trainer::new(config(&model, &out, "dit", 2, ""), false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model_index.json") || err.contains("not"),
        "{err}"
    );
    small_model(&model);
    // a bucket the VAE cannot take
    let mut cfg = config(&model, &out, "vae", 2, "");
    cfg.data.buckets = vec![[6, 32, 32]];
    let err = Trainer::new(cfg, false).err().unwrap().to_string();
    assert!(
        err.contains("[6, 32, 32]") && err.contains("1 + 4k"),
        "{err}"
    );
    // resume without a checkpoint
    let err = Trainer::new(config(&model, &out, "vae", 2, ""), true)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nothing to resume"), "{err}");
    // an empty dataset folder
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut cfg = config(&model, &out, "vae", 2, "");
    cfg.data.source = "folder".into();
    cfg.data.path = Some(empty);
    let err = Trainer::new(cfg, false).err().unwrap().to_string();
    assert!(err.contains("no videos"), "{err}");
    // a config file with a typo
    let file = tmp.path().join("run.toml");
    std::fs::write(&file, "model = \"m\"\nout = \"o\"\npart = \"vae\"\nsteps = 1\nbatchsize = 2\n[data]\nbuckets = [[5, 32, 32]]\n").unwrap();
    let err = TrainConfig::from_file(&file).err().unwrap().to_string();
    assert!(
        err.contains("batchsize") && err.contains("run.toml"),
        "{err}"
    );
}
