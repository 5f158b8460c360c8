//! Failures are clear errors that name the path, and leave nothing behind.

mod common;

use std::fs;

use common::{moving_pattern, names_in};
use vidgen_video::{read, write, Error, Frames};

#[test]
fn unknown_extension_lists_the_accepted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.avi");
    let err = write(&path, &moving_pattern(2, 8, 8, 16.0)).unwrap_err();
    assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err:?}");
    let text = err.to_string();
    for ext in [".mp4", ".gif", ".png", "clip.avi"] {
        assert!(text.contains(ext), "{text}");
    }
    assert!(read(&path).is_err());
    assert!(write(
        &dir.path().join("noextension"),
        &moving_pattern(1, 8, 8, 16.0)
    )
    .is_err());
    assert!(names_in(dir.path()).is_empty());
}

#[test]
fn uppercase_extensions_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("CLIP.MP4");
    write(&path, &moving_pattern(2, 8, 8, 16.0)).unwrap();
    assert_eq!(read(&path).unwrap().frames, 2);
}

#[test]
fn missing_folder_is_named_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["clip.mp4", "clip.gif", "clip.png"] {
        let path = dir.path().join("no/such/folder").join(name);
        let err = write(&path, &moving_pattern(2, 8, 8, 16.0)).unwrap_err();
        assert!(matches!(err, Error::MissingFolder { .. }), "{err:?}");
        assert!(err.to_string().contains("no/such/folder"), "{err}");
    }
    // A file where the folder should be is no folder either.
    fs::write(dir.path().join("file"), "x").unwrap();
    let err = write(
        &dir.path().join("file/clip.mp4"),
        &moving_pattern(1, 8, 8, 16.0),
    )
    .unwrap_err();
    assert!(matches!(err, Error::MissingFolder { .. }), "{err:?}");
    assert_eq!(names_in(dir.path()), ["file"]);
}

#[test]
fn invalid_frames_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut video = moving_pattern(2, 8, 8, 16.0);
    video.data[77] = f32::NAN;
    for name in ["clip.mp4", "clip.gif", "clip.png"] {
        let err = write(&dir.path().join(name), &video).unwrap_err();
        assert!(matches!(err, Error::InvalidFrames(_)), "{err:?}");
    }
    let short = Frames {
        data: vec![0.5; 10],
        ..moving_pattern(1, 8, 8, 16.0)
    };
    assert!(matches!(
        write(&dir.path().join("a.mp4"), &short),
        Err(Error::InvalidFrames(_))
    ));
    assert!(names_in(dir.path()).is_empty());
}

#[test]
fn truncated_mp4_is_a_decode_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    write(&path, &moving_pattern(12, 64, 64, 16.0)).unwrap();
    let bytes = fs::read(&path).unwrap();
    // Cut in the media data (moov comes first, so the index survives) ...
    fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = read(&path).unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
    // ... and in the header.
    fs::write(&path, &bytes[..40]).unwrap();
    let err = read(&path).unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("clip.mp4"), "{err}");
}

#[test]
fn garbage_inputs_are_decode_errors() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["junk.mp4", "junk.gif", "junk.png"] {
        let path = dir.path().join(name);
        fs::write(&path, b"this is not a video at all, just some text").unwrap();
        let err = read(&path).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(name), "{err}");
    }
    // A gif cut short keeps the frames before the cut or fails; it never panics.
    let path = dir.path().join("cut.gif");
    write(&path, &moving_pattern(6, 32, 32, 16.0)).unwrap();
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = read(&path).unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
}

#[test]
fn missing_inputs_are_io_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.mp4");
    let err = read(&path).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.mp4"), "{err}");
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = read(&empty).unwrap_err();
    assert!(err.to_string().contains("no numbered frames"), "{err}");
}

#[test]
fn png_output_never_replaces_a_folder_of_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("clip");
    fs::create_dir(&folder).unwrap();
    fs::write(folder.join("notes.txt"), "mine").unwrap();
    let err = write(&dir.path().join("clip.png"), &moving_pattern(2, 8, 8, 16.0)).unwrap_err();
    assert!(matches!(err, Error::FolderInUse { .. }), "{err:?}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
    assert_eq!(names_in(&folder), ["notes.txt"]);
    assert_eq!(
        names_in(dir.path()),
        ["clip"],
        "no poster and no temporary folder"
    );
}
