//! `vidgen train` as a user runs it: a world dataset written by `vidgen data world` as the
//! folder source, a run stopped with `--max-steps` and continued with `--resume`, the run
//! folder's outputs, and a config typo.

use std::path::Path;
use std::process::Command;

fn vidgen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vidgen"))
        .args(args)
        .output()
        .expect("run vidgen")
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "vidgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn train_a_vae_on_a_video_folder_stop_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let model = dir.join("model");
    ok(&vidgen(&[
        "init",
        "--preset",
        "tiny-world",
        "-o",
        &s(&model),
    ]));
    let data = dir.join("clips");
    ok(&vidgen(&[
        "data",
        "world",
        "--count",
        "3",
        "--out",
        &s(&data),
        "--frames",
        "9",
        "--height",
        "32",
        "--width",
        "48",
    ]));
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        r#"
model = "model"
out = "run"
part = "vae"
steps = 4
batch_size = 2
checkpoint_every = 2
sample_every = 4
[data]
source = "folder"
path = "clips"
buckets = [[5, 32, 32], [9, 32, 48]]
[vae]
stats_clips = 2
"#,
    )
    .unwrap();
    let cfg = s(&config);
    ok(&vidgen(&["train", "--config", &cfg, "--max-steps", "2"]));
    let run = dir.join("run");
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints/latest")).unwrap(),
        "step-000002"
    );
    // a second start without --resume would overwrite the run: refused
    let again = vidgen(&["train", "--config", &cfg]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    ok(&vidgen(&["train", "--config", &cfg, "--resume"]));
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints/latest")).unwrap(),
        "step-000004"
    );
    for file in [
        "config.toml",
        "loss.csv",
        "loss.png",
        "samples/step-000004-reconstruction.mp4",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let csv = std::fs::read_to_string(run.join("loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    // the exported VAE carries the latent statistics the DiT normalises with
    let vae_cfg = std::fs::read_to_string(model.join("vae/config.json")).unwrap();
    assert!(
        !vae_cfg.contains("\"latents_std\": [\n    1.0,"),
        "{vae_cfg}"
    );

    // a typo in the config names the key and the file
    std::fs::write(&config, "model = \"model\"\nout = \"run2\"\npart = \"vae\"\nsteps = 1\nlearning_rate = 1\n[data]\nbuckets = [[5, 32, 32]]\n").unwrap();
    let bad = vidgen(&["train", "--config", &cfg]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("learning_rate") && err.contains("run.toml"),
        "{err}"
    );
}

/// The run configs committed under `train/` (the built-in model's recipe, TRAINING.md) stay
/// valid as the config format changes: each parses, passes the checks, and names the built-in
/// model folder.
#[test]
fn the_committed_training_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../train");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = vidgen::train::TrainConfig::from_file(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                cfg.model.ends_with("models/tiny-world") || cfg.model.ends_with("tiny-world-large"),
                "{}: model {}",
                path.display(),
                cfg.model.display()
            );
            count += 1;
        }
    }
    assert!(count >= 10, "{count} configs in {}", dir.display());
}
