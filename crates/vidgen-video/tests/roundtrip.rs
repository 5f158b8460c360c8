//! Write → read round trips for every format: shapes, frame rates and pixels survive.

mod common;

use common::{crop, mean_abs_error, moving_pattern, names_in};
use vidgen_video::{read, write, Frames, DEFAULT_FPS};

#[test]
fn mp4_keeps_count_size_fps_and_looks_like_the_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    let video = moving_pattern(33, 96, 160, 16.0);
    write(&path, &video).unwrap();
    let back = read(&path).unwrap();
    assert_eq!(
        (back.frames, back.height, back.width),
        (video.frames, video.height, video.width)
    );
    assert!((back.fps - 16.0).abs() < 1e-3, "fps {}", back.fps);
    let error = mean_abs_error(&video.data, &back.data);
    eprintln!("mp4 96x160, 33 frames: mean abs error {error:.4}");
    assert!(error < 0.03, "mean abs error {error}");
    // Every frame, not just the average, looks like its source (no skipped or stale frames).
    for f in 0..video.frames {
        let e = mean_abs_error(video.frame(f), back.frame(f));
        assert!(e < 0.05, "frame {f}: mean abs error {e}");
    }
    assert_eq!(
        names_in(dir.path()),
        ["clip.mp4"],
        "no temporary files left"
    );
}

#[test]
fn mp4_keeps_common_frame_rates() {
    let dir = tempfile::tempdir().unwrap();
    for fps in [0.5, 8.0, 24.0, 25.0, 30.0, 120.0] {
        let path = dir.path().join(format!("clip{fps}.mp4"));
        write(&path, &moving_pattern(5, 32, 48, fps)).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.frames, 5);
        assert!(
            (back.fps - fps).abs() < 1e-3,
            "wrote {fps} fps, read {}",
            back.fps
        );
    }
}

#[test]
fn mp4_of_one_frame_lasts_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("still.mp4");
    let video = moving_pattern(1, 64, 64, 16.0);
    write(&path, &video).unwrap();
    let back = read(&path).unwrap();
    assert_eq!((back.frames, back.height, back.width), (1, 64, 64));
    assert!((back.fps - 16.0).abs() < 1e-3, "fps {}", back.fps);
    let error = mean_abs_error(&video.data, &back.data);
    assert!(error < 0.03, "mean abs error {error}");
}

#[test]
fn mp4_of_odd_size_is_padded_to_even_by_repeating_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.mp4");
    let video = moving_pattern(4, 33, 47, 16.0);
    write(&path, &video).unwrap();
    let back = read(&path).unwrap();
    assert_eq!((back.frames, back.height, back.width), (4, 34, 48));
    let error = mean_abs_error(&video.data, &crop(&back, 33, 47));
    assert!(
        error < 0.03,
        "mean abs error {error} in the original region"
    );
    // The padding repeats the last column and row.
    let frame = back.frame(0);
    let pixel = |y: usize, x: usize| &frame[(y * 48 + x) * 3..][..3];
    for y in [0, 10, 32] {
        let gap = mean_abs_error(pixel(y, 47), pixel(y, 46));
        assert!(gap < 0.06, "row {y}: padded column differs by {gap}");
    }
}

#[test]
fn mp4_smaller_than_16_pixels_is_padded_to_16() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.mp4");
    // Smooth content: at 5x9 the moving pattern's detail is finer than 4:2:0 chroma (0.04
    // error before any coding), and this test is about the padding.
    let data = (0..3 * 5 * 9)
        .flat_map(|p| {
            let (f, y, x) = (p / 45, p / 9 % 5, p % 9);
            [
                0.2 + 0.05 * x as f32,
                0.3 + 0.08 * y as f32,
                0.4 + 0.1 * f as f32,
            ]
        })
        .collect();
    let video = Frames::new(3, 5, 9, 16.0, data).unwrap();
    write(&path, &video).unwrap();
    let back = read(&path).unwrap();
    assert_eq!((back.frames, back.height, back.width), (3, 16, 16));
    let error = mean_abs_error(&video.data, &crop(&back, 5, 9));
    assert!(
        error < 0.03,
        "mean abs error {error} in the original region"
    );
}

#[test]
fn mp4_overwrites_an_earlier_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    write(&path, &moving_pattern(6, 32, 32, 16.0)).unwrap();
    write(&path, &moving_pattern(3, 32, 32, 16.0)).unwrap();
    assert_eq!(read(&path).unwrap().frames, 3);
    assert_eq!(names_in(dir.path()), ["clip.mp4"]);
}

#[test]
fn gif_keeps_count_size_and_looks_like_the_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.gif");
    let video = moving_pattern(16, 72, 120, 16.0);
    write(&path, &video).unwrap();
    let back = read(&path).unwrap();
    assert_eq!((back.frames, back.height, back.width), (16, 72, 120));
    // Delays are whole centiseconds; 16 frames at 16 fps are exactly one second.
    assert!((back.fps - 16.0).abs() < 1e-3, "fps {}", back.fps);
    let error = mean_abs_error(&video.data, &back.data);
    // Dithering trades per-pixel error for right local means: measured 0.0295.
    eprintln!("gif 72x120, 16 frames: mean abs error {error:.4}");
    assert!(error < 0.035, "mean abs error {error}");
    let bytes = std::fs::read(&path).unwrap();
    let netscape = bytes.windows(11).any(|w| w == b"NETSCAPE2.0");
    assert!(netscape, "the loop extension is present");
}

#[test]
fn gif_with_few_colours_is_lossless_at_odd_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.gif");
    // 7 frames of 5x3 pixels from a small set of colours.
    let rgb: Vec<u8> = (0..7 * 5 * 3)
        .flat_map(|p| match (p / 3 + p / 15) % 4 {
            0 => [255, 0, 0],
            1 => [0, 128, 255],
            2 => [10, 20, 30],
            _ => [255, 255, 255],
        })
        .collect();
    let video = Frames::from_rgb8(7, 5, 3, 10.0, &rgb).unwrap();
    write(&path, &video).unwrap();
    let back = read(&path).unwrap();
    assert_eq!((back.frames, back.height, back.width), (7, 5, 3));
    assert_eq!(back.to_rgb8(), rgb);
    assert!((back.fps - 10.0).abs() < 1e-3);
}

#[test]
fn png_writes_a_poster_and_numbered_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.png");
    let video = moving_pattern(12, 33, 47, 24.0);
    write(&path, &video).unwrap();
    assert_eq!(names_in(dir.path()), ["clip", "clip.png"]);
    let expected: Vec<String> = (0..12).map(|i| format!("{i:05}.png")).collect();
    assert_eq!(names_in(&dir.path().join("clip")), expected);

    let poster = read(&path).unwrap();
    assert_eq!((poster.frames, poster.height, poster.width), (1, 33, 47));
    assert_eq!(poster.fps, DEFAULT_FPS);
    assert_eq!(poster.to_rgb8(), video.frame_rgb8(0));

    let all = read(&dir.path().join("clip")).unwrap();
    assert_eq!((all.frames, all.height, all.width), (12, 33, 47));
    assert_eq!(all.to_rgb8(), video.to_rgb8(), "png is lossless at 8 bits");
}

#[test]
fn png_rewrite_drops_stale_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.png");
    write(&path, &moving_pattern(5, 8, 8, 16.0)).unwrap();
    write(&path, &moving_pattern(2, 8, 8, 16.0)).unwrap();
    assert_eq!(
        names_in(&dir.path().join("clip")),
        ["00000.png", "00001.png"]
    );
    assert_eq!(
        names_in(dir.path()),
        ["clip", "clip.png"],
        "no temporary folders left"
    );
}

#[test]
fn folder_frames_are_read_in_numeric_order() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("frames");
    std::fs::create_dir(&folder).unwrap();
    let video = moving_pattern(11, 6, 6, 16.0);
    // Unpadded names: "10.png" sorts before "2.png" as text but not as a number.
    for f in 0..11 {
        let single = Frames::new(1, 6, 6, 16.0, video.frame(f).to_vec()).unwrap();
        write(&dir.path().join(format!("tmp{f}.png")), &single).unwrap();
        std::fs::rename(
            dir.path().join(format!("tmp{f}.png")),
            folder.join(format!("{f}.png")),
        )
        .unwrap();
    }
    std::fs::write(folder.join("notes.txt"), "ignored").unwrap();
    let back = read(&folder).unwrap();
    assert_eq!(back.frames, 11);
    assert_eq!(back.to_rgb8(), video.to_rgb8());
}
