//! End-to-end tests of `vidgen data world` and `vidgen eval`: the dataset folder a trainer
//! reads, the baselines that bound every model's score, and bad input that must fail cleanly.

use std::path::Path;
use std::process::{Command, Output};

use vidgen::data::Truth;

fn vidgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vidgen"))
        .args(args)
        .output()
        .expect("run vidgen")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "vidgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The JSON object on the last line of stdout.
fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().expect("some output")).expect("last line is JSON")
}

#[test]
fn data_world_writes_clips_captions_truths_and_a_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("world");
    let dir = out.to_str().unwrap();
    ok(&vidgen(&[
        "data", "world", "--count", "4", "--out", dir, "--seed", "10", "--height", "48", "--width",
        "80", "--frames", "9",
    ]));
    let manifest = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = manifest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (i, line) in lines.iter().enumerate() {
        let stem = format!("clip_{i:05}");
        assert_eq!(line["video"], format!("{stem}.mp4"));
        assert_eq!(line["truth"], format!("{stem}.json"));
        let caption = std::fs::read_to_string(out.join(format!("{stem}.txt"))).unwrap();
        assert_eq!(line["caption"], caption.as_str());
        let truth_text = std::fs::read_to_string(out.join(format!("{stem}.json"))).unwrap();
        let truth: Truth = serde_json::from_str(&truth_text).unwrap();
        assert_eq!(truth.spec.num_frames, 9);
        assert!(caption.contains(&truth.objects[0].colour), "{caption}");
        // The mp4 decodes back to the clip's size, and still scores as the clip's truth says.
        let frames = vidgen_video::read(&out.join(format!("{stem}.mp4"))).unwrap();
        assert_eq!((frames.frames, frames.height, frames.width), (9, 48, 80));
        let score = vidgen::eval::score_clip(&frames.data, 9, 48, 80, &truth, &caption);
        assert!(score.colour && score.shape, "{stem} `{caption}`: {score:?}");
    }
    // Same seeds, same captions.
    let again = tmp.path().join("again");
    ok(&vidgen(&[
        "data",
        "world",
        "--count",
        "4",
        "--out",
        again.to_str().unwrap(),
        "--seed",
        "10",
        "--height",
        "48",
        "--width",
        "80",
        "--frames",
        "9",
    ]));
    assert_eq!(
        std::fs::read_to_string(again.join("manifest.jsonl")).unwrap(),
        manifest
    );
}

#[test]
fn data_world_refuses_a_non_empty_folder_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
    let dir = tmp.path().to_str().unwrap();
    let out = vidgen(&["data", "world", "--count", "1", "--out", dir]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not empty") && err.contains("--force"),
        "{err}"
    );
    assert!(!tmp.path().join("manifest.jsonl").exists());
    ok(&vidgen(&[
        "data", "world", "--count", "1", "--out", dir, "--force",
    ]));
    assert!(Path::new(dir).join("clip_00000.mp4").is_file());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("keep.txt")).unwrap(),
        "mine"
    );

    let out = vidgen(&[
        "data", "world", "--count", "1", "--out", dir, "--width", "8", "--force",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("at least 16"),
        "{err}"
    );
}

#[test]
fn eval_ground_truth_scores_high_and_noise_scores_low() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("scores.json");
    let stdout = ok(&vidgen(&[
        "eval",
        "--ground-truth",
        "--count",
        "60",
        "--json",
        json.to_str().unwrap(),
    ]));
    assert!(
        stdout.contains("colour") && stdout.contains("ground-truth"),
        "{stdout}"
    );
    let truth = last_json(&stdout);
    let s = &truth["summary"];
    assert_eq!(s["count"], 60);
    assert!(s["colour_accuracy"].as_f64().unwrap() >= 0.95, "{s}");
    assert!(s["shape_accuracy"].as_f64().unwrap() >= 0.9, "{s}");
    assert!(s["direction_accuracy"].as_f64().unwrap() >= 0.95, "{s}");
    assert!(s["consistency"].as_f64().unwrap() >= 0.95, "{s}");
    // Every scene drawn is broken out, and the breakdown adds up to the summary.
    let by_scene = truth["direction_by_scene"].as_object().unwrap();
    assert!(by_scene.len() >= 5, "{by_scene:?}");
    let mut total = 0;
    for (scene, entry) in by_scene {
        assert!(
            entry["accuracy"].as_f64().unwrap() >= 0.9,
            "{scene}: {entry}"
        );
        total += entry["count"].as_u64().unwrap();
    }
    assert_eq!(total, s["direction_count"].as_u64().unwrap());
    assert!(stdout.contains("direction by scene: move "), "{stdout}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(file["clips"].as_array().unwrap().len(), 60);
    assert_eq!(file["summary"], *s);

    let noise = last_json(&ok(&vidgen(&["eval", "--noise", "--count", "20"])));
    let s = &noise["summary"];
    assert!(s["colour_accuracy"].as_f64().unwrap() <= 0.1, "{s}");
    assert!(s["direction_accuracy"].as_f64().unwrap() <= 0.2, "{s}");
    assert!(s["consistency"].as_f64().unwrap() <= 0.1, "{s}");
}

#[test]
fn eval_runs_a_model_at_its_default_size() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    ok(&vidgen(&[
        "init",
        "--preset",
        "tiny",
        "-o",
        model.to_str().unwrap(),
    ]));
    let stdout = ok(&vidgen(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--count",
        "2",
        "--steps",
        "1",
    ]));
    let record = last_json(&stdout);
    assert_eq!(record["mode"], "model");
    assert_eq!(record["summary"]["count"], 2);
    // The tiny preset's own size (vidgen.json), not the world's default.
    let defaults: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("vidgen.json")).unwrap()).unwrap();
    assert_eq!(record["spec"]["width"], defaults["width"]);
    let c = record["summary"]["consistency"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&c));

    let out = vidgen(&["eval", "--model", tmp.path().join("nope").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nope"), "{err}");
}

/// `--reconstruct` reports the round trip's PSNR by frame index. The built-in VAE keeps its last
/// frames about as well as its first (27.9 → 27.0 dB over these 5 clips); the VAE it replaced,
/// trained on 5- and 9-frame clips only, fell from 27.6 to 18.2 dB by frame 16.
#[test]
fn eval_reconstruct_reports_psnr_by_frame() {
    let stdout = ok(&vidgen(&["eval", "--reconstruct", "--count", "5"]));
    let record = last_json(&stdout);
    assert_eq!(record["mode"], "reconstruct");
    let psnr: Vec<f64> = record["frame_psnr_db"]
        .as_array()
        .expect("frame_psnr_db")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(psnr.len(), 17, "{psnr:?}");
    assert!(psnr.iter().all(|p| *p > 22.0), "{psnr:?}");
    assert!(psnr[16] > psnr[0] - 4.0, "{psnr:?}");
    assert!(stdout.contains("round-trip PSNR by frame"), "{stdout}");
}
