//! 8-bit (Q8_0) transformer weights: what they cost in accuracy against the dense model, on
//! the built-in model's architecture with random weights.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vidgen::families::wan::init::{detached, random_weights};
use vidgen::families::wan::presets;
use vidgen::families::wan::transformer::WanTransformer3D;
use vidgen::noise::NoiseRng;

#[test]
fn q8_0_transformer_stays_within_a_percent_or_two_of_f32() {
    let cfg = presets::preset("tiny-world").unwrap().transformer;
    let map = random_weights(&mut NoiseRng::new(3), DType::F32, |vb| {
        WanTransformer3D::new(&cfg, vb).map(|_| ())
    })
    .unwrap();
    let build = |quantize: Option<GgmlDType>| {
        let vb = VarBuilder::from_tensors(detached(&map), DType::F32, &Device::Cpu);
        vidgen::nn::linear::quantized(quantize, || WanTransformer3D::new(&cfg, vb)).unwrap()
    };
    let (dense, q8) = (build(None), build(Some(GgmlDType::Q8_0)));
    let dev = Device::Cpu;
    let x = vidgen::noise::randn(1, (2, cfg.in_channels, 3, 8, 8), &dev).unwrap();
    let text = vidgen::noise::randn(2, (2, 12, cfg.text_dim), &dev).unwrap();
    let t = Tensor::new(&[900f32, 200.], &dev).unwrap();
    let want = dense.forward(&x, &t, &text).unwrap();
    let got = q8.forward(&x, &t, &text).unwrap();
    let rms = |v: &Tensor| {
        v.sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    let rel = rms(&(&got - &want).unwrap()) / rms(&want);
    println!("Q8_0 transformer output: relative RMS error {rel:.2e}");
    assert!(rel > 0.0, "nothing was quantized");
    assert!(rel < 0.02, "relative RMS error {rel}");
}
