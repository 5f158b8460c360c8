//! `vidgen bench` prints one JSON object per part, for each family's preset, and refuses sizes
//! a family cannot take.

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vidgen"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap()
}

/// The JSON lines of a run that must have succeeded.
fn json_lines(out: std::process::Output, what: &str) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_family_preset_reports_its_parts() {
    for (preset, frames, text_len) in [
        ("tiny", "5", 512),
        ("ltx-video-2b", "9", 128),
        ("cogvideox-2b", "5", 226),
    ] {
        let out = bench(&[
            "--preset",
            preset,
            "--layers",
            "1",
            "--parts",
            "dit,dit-cfg",
            "--frames",
            frames,
            "--height",
            "32",
            "--width",
            "32",
            "--threads",
            "1",
        ]);
        let lines = json_lines(out, preset);
        assert_eq!(lines.len(), 2, "{preset}");
        for (line, part) in lines.iter().zip(["dit", "dit-cfg"]) {
            assert_eq!(line["part"], part);
            assert_eq!(line["preset"], preset);
            assert_eq!(line["text_len"], text_len);
            assert!(line["seconds"].as_f64().unwrap() > 0.0);
            assert!(line["gflops"].as_f64().unwrap() > 0.0);
            assert!(line["peak_rss_bytes"].as_u64().unwrap() > 0);
        }
    }
    let out = bench(&[
        "--preset",
        "ltx-video-2b",
        "--frames",
        "5",
        "--layers",
        "1",
        "--parts",
        "dit",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("8k+1"));
}

#[test]
fn text_and_pipeline_parts_on_the_built_in_model_with_the_fast_mode() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny-world");
    let out = bench(&[
        "--model",
        model,
        "--parts",
        "text,pipeline",
        "--steps",
        "10",
        "--step-cache",
        "0.3",
        "--threads",
        "2",
    ]);
    let lines = json_lines(out, "built-in model");
    let parts: Vec<&str> = lines.iter().map(|l| l["part"].as_str().unwrap()).collect();
    assert_eq!(parts, ["text", "pipeline", "pipeline-fast"]);
    assert!(lines[0]["gflops"].as_f64().unwrap() > 0.0);
    let (default, fast) = (&lines[1], &lines[2]);
    for line in [default, fast] {
        assert!(line["seconds"].as_f64().unwrap() > 0.0);
        assert!(line["stage_seconds"]["denoise"].as_f64().unwrap() > 0.0);
        assert_eq!(line["steps"], 10);
        assert_eq!(line["frames"], 17); // the model's own size
    }
    // at this threshold the built-in model reuses some steps, and its frames move away from
    // the default's, measurably but not wholly
    assert!(fast["skipped_steps"].as_u64().unwrap() > 0);
    let ssim = fast["ssim"].as_f64().unwrap();
    assert!(ssim > 0.3 && ssim < 1.0, "ssim {ssim}");
    assert!(fast["psnr_db"].as_f64().unwrap() > 10.0);
    assert!(fast["speedup"].as_f64().unwrap() > 0.0);

    // the pipeline needs real weights
    let out = bench(&["--preset", "tiny", "--parts", "pipeline"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"));
}
