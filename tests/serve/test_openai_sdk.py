"""The official `openai` SDK's `client.videos` against a running `vidgen serve`.

Run by tests/serve/run.sh, which starts the server with the built-in model and passes its base URL and
API key in VIDGEN_BASE_URL / VIDGEN_API_KEY. Every check raises on failure.
"""

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import warnings

import openai
from openai import OpenAI

warnings.simplefilter("ignore", DeprecationWarning)  # the SDK marks the Videos API deprecated

BASE_URL = os.environ["VIDGEN_BASE_URL"]
API_KEY = os.environ["VIDGEN_API_KEY"]
client = OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok  {what}")


def png_bytes(w=8, h=8):
    import zlib

    raw = b"".join(b"\x00" + b"\x80\x10\x10" * w for _ in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# 1. create_and_poll with the model's defaults (the SDK sends multipart/form-data)
started = time.time()
video = client.videos.create_and_poll(prompt="a red ball bounces on the floor", extra_body={"seed": 1})
check(video.status == "completed", f"create_and_poll completes ({video.status}, {time.time() - started:.1f}s)")
check(video.object == "video" and video.id.startswith("video_"), "a video object with a server id")
check(video.progress == 100 and video.completed_at >= video.created_at, "progress 100, completed_at set")
check(video.size == "64x64" and video.seconds == "2" and video.model == "tiny-world", "defaults from the model folder")
check(video.prompt == "a red ball bounces on the floor", "the prompt is echoed")

# 2. the three variants of the content; the mp4 decodes (ffprobe counts its frames)
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "video.mp4")
    client.videos.download_content(video.id).write_to_file(path)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=codec_name,width,height,nb_read_frames", "-of", "json", path],
        capture_output=True, text=True, check=True,
    )
    stream = json.loads(probe.stdout)["streams"][0]
    check((stream["codec_name"], stream["width"], stream["height"], stream["nb_read_frames"]) == ("h264", 64, 64, "17"),
          f"write_to_file gives an mp4 that decodes: {stream}")
thumb = client.videos.download_content(video.id, variant="thumbnail").read()
check(thumb[:4] == b"RIFF" and thumb[8:12] == b"WEBP", "variant=thumbnail is WebP")
sprites = client.videos.download_content(video.id, variant="spritesheet").read()
check(sprites[:3] == b"\xff\xd8\xff", "variant=spritesheet is JPEG")

# 3. explicit size and duration, and vidgen's own fields
video2 = client.videos.create_and_poll(
    prompt="the small blue square slides to the left", size="80x48", seconds="4",
    extra_body={"steps": 4, "guidance": 3.0, "seed": 7, "negative_prompt": "blurry"},
)
check(video2.status == "completed" and video2.size == "80x48" and video2.seconds == "4",
      f"size 80x48, 4 seconds ({video2.size}, {video2.seconds})")

# 4. retrieve, list with pagination, remix
check(client.videos.retrieve(video.id).id == video.id, "retrieve")
page = client.videos.list(limit=1, order="asc")
check(len(page.data) == 1 and page.data[0].id == video.id and page.has_more, "list: first page of 1, has_more")
page2 = client.videos.list(limit=10, order="asc", after=video.id)
check([v.id for v in page2.data][:1] == [video2.id], "list: the page after the first")
ids = [v.id for v in client.videos.list(order="desc").data]
check(ids.index(video2.id) < ids.index(video.id), "list: newest first by default")
remix = client.videos.remix(video.id, prompt="a green ball bounces on the floor")
check(remix.remixed_from_video_id == video.id and remix.size == video.size, "remix keeps the settings")
remix = client.videos.poll(remix.id)
check(remix.status == "completed", "the remix completes")

# 5. errors, as the SDK's exception types
try:
    client.videos.create(prompt="a ball", size="65x64")
    raise AssertionError("an impossible size was accepted")
except openai.UnprocessableEntityError as e:
    check(e.body.get("param") == "size" and "64" in e.body["message"], f"422 for 65x64: {e.body['message']}")
try:
    client.videos.create(prompt="a ball", input_reference=("first.png", io.BytesIO(png_bytes()), "image/png"))
    raise AssertionError("image-to-video was accepted by a text-only model")
except openai.BadRequestError as e:
    check(e.body.get("param") == "input_reference", "400 for input_reference on a text-to-video model")
try:
    client.videos.create(prompt="a ball", model="sora-2")
    raise AssertionError("a model this server does not run was accepted")
except openai.BadRequestError as e:
    check(e.body.get("param") == "model", "400 for another model's name")
try:
    client.videos.retrieve("video_doesnotexist")
    raise AssertionError("an unknown id was found")
except openai.NotFoundError:
    check(True, "404 for an unknown id")
try:
    OpenAI(base_url=BASE_URL, api_key="wrong", max_retries=0).videos.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    check(True, "401 for a wrong API key")

# 6. delete
deleted = client.videos.delete(video2.id)
check(deleted.deleted and deleted.id == video2.id, "delete")
try:
    client.videos.retrieve(video2.id)
    raise AssertionError("a deleted video is still there")
except openai.NotFoundError:
    check(True, "a deleted video is gone")

print("all openai SDK checks passed")
sys.exit(0)
