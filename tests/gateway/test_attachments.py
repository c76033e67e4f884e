"""AttachmentIntake: limits, allowed types, what each file becomes, and what is told when not used."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from adapters.contract import Attachment, AttachmentError
from gateway.attachments import HOW_TO_TRANSCRIBE, AttachmentIntake, AttachmentSettings
from gateway.config import ConfigError, load_config
from moa_core.values import ImagePart, Message
from tests.gateway.test_config import BASE, write


def picture(kind: str = "PNG", size: tuple[int, int] = (30, 20)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size).save(out, kind)
    return out.getvalue()


class Files:
    """An adapter's fetch: bytes by ref, or an AttachmentError; records what was fetched."""

    def __init__(self, **files: bytes | Exception) -> None:
        self.files = files
        self.fetched: list[str] = []

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        self.fetched.append(attachment.ref)
        found = self.files[attachment.ref]
        if isinstance(found, Exception):
            raise found
        return found


def att(ref: str, kind: str = "text", name: str | None = None, media_type: str = "text/plain",
        size: int | None = None) -> Attachment:
    return Attachment(kind, name or ref, media_type, size, ref)  # type: ignore[arg-type]


async def test_what_is_over_a_limit_or_not_accepted_is_named_and_the_rest_used():
    files = Files(a=b"alpha", b=b"beta", c=b"gamma", z=b"PK\x03\x04", big=b"x" * 10)
    intake = AttachmentIntake(AttachmentSettings(max_count=4, max_bytes=5, allowed_types=("text", "image")))
    prepared = await intake.prepare(files, [
        att("a"), att("big", size=10), att("z", "other", "z.zip", "application/zip"),
        att("v", "audio", "voice.ogg", "audio/ogg"), att("b"),
    ], "question")
    assert prepared.notes == (
        "b: over the limit of 4 files per message",
        "big: 10 bytes, over the 5 bytes limit",
        "z.zip: application/zip files are not accepted here (allowed: text, image)",
        "voice.ogg: audio/ogg files are not accepted here (allowed: text, image)",
    )
    assert files.fetched == ["a"]  # nothing refused was downloaded
    assert prepared.prompt == "question\n\nFile a (5 characters):\n```\nalpha\n```"


async def test_an_unlimited_size_is_still_checked_after_the_download_and_fetch_errors_are_told():
    files = Files(big=b"x" * 10, gone=AttachmentError("gone.txt: the platform refused the download"))
    intake = AttachmentIntake(AttachmentSettings(max_bytes=5))
    prepared = await intake.prepare(files, [att("big"), att("gone", name="gone.txt")], "q")
    assert prepared.notes == ("big: 10 bytes, over the 5 bytes limit", "gone.txt: the platform refused the download")
    assert prepared.prompt == "q"


async def test_images_are_read_for_their_real_type_and_size():
    png, bmp = picture("PNG", (30, 20)), picture("BMP")
    files = Files(p=png, b=bmp, t=b"not an image")
    intake = AttachmentIntake(AttachmentSettings())
    prepared = await intake.prepare(files, [att("p", "image", "shot.jpg", "image/jpeg"),
                                            att("b", "image", "old.bmp", "image/bmp"),
                                            att("t", "image", "fake.png", "image/png")], "")
    [image] = prepared.images
    assert (image.name, image.media_type, image.width, image.height, image.data) == ("shot.jpg", "image/png", 30, 20,
                                                                                     png)
    assert prepared.notes == ("old.bmp: BMP images are not supported (send JPEG, PNG, GIF or WebP)",
                              "fake.png: not a readable image")
    assert not prepared.empty  # an image alone is a question


async def test_binary_text_and_code_fences_inside_a_file():
    files = Files(bin=b"abc\x00def", code=b"x = '''```'''\n")
    prepared = await AttachmentIntake(AttachmentSettings()).prepare(
        files, [att("bin", name="data.csv"), att("code", name="a.py", media_type="text/x-python")], "")
    assert prepared.notes == ("data.csv: looks like a binary file, not text",)
    assert prepared.prompt == "File a.py (14 characters):\n````py\nx = '''```'''\n\n````"


async def test_audio_without_a_transcriber_says_how_to_set_one_and_leaves_nothing_to_ask():
    prepared = await AttachmentIntake(AttachmentSettings()).prepare(
        Files(v=b"OggS"), [att("v", "audio", "voice.ogg", "audio/ogg")], "")
    assert prepared.notes == (f"voice.ogg: {HOW_TO_TRANSCRIBE}",) and prepared.empty


async def test_an_adapter_without_files_is_told():
    prepared = await AttachmentIntake(AttachmentSettings()).prepare(object(), [att("a")], "q")
    assert prepared.notes == ("a: files cannot be fetched on this platform",)


async def test_history_gets_the_current_images_and_kept_ones_only_when_configured():
    png = picture()
    files = Files(p=png)
    for keep in (False, True):
        intake = AttachmentIntake(AttachmentSettings(keep_images_in_history=keep))
        [image] = (await intake.prepare(files, [att("p", "image", "p.png", "image/png")], "")).images
        described = ImagePart(image.name, image.media_type, b"", image.width, image.height, image.digest)
        history = [Message("user", "first", images=(described,)), Message("assistant", "a"),
                   Message("user", "again", images=(described,))]
        filled = intake.with_images(history, [image])
        assert filled[2].images[0].data == png
        assert filled[0].images[0].data == (png if keep else b"")


def test_config_keys_of_attachments_transcription_and_vision(tmp_path: Path):
    config = load_config(write(tmp_path, BASE.replace(
        'api_key_env = "OPENROUTER_API_KEY"',
        'api_key_env = "OPENROUTER_API_KEY"\nvision_models = ["openai/gpt-5.1"]') + """
[providers.openai]
api = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
vision = true

[attachments]
max_bytes = 1000000
max_count = 3
text_max_chars = 5000
keep_images_in_history = true
allowed_types = ["image/png", "text"]

[transcription]
provider = "openai"
model = "whisper-1"
"""))
    assert config.engine.providers["openrouter"].vision_models == ("openai/gpt-5.1",)
    assert config.engine.providers["openai"].vision is True
    assert config.attachments == AttachmentSettings(1_000_000, 3, 5000, True, ("image/png", "text"))
    assert config.transcription is not None and config.transcription.provider == "openai"
    assert load_config(write(tmp_path, BASE)).transcription is None


@pytest.mark.parametrize("extra, expected", [
    ("[attachments]\nmax_size = 3", "attachments.max_size: unknown key"),
    ("[attachments]\nallowed_types = [\"pictures\"]", "attachments.allowed_types: 'pictures' is neither a kind"),
    ("[transcription]\nprovider = \"nope\"", "transcription.provider: names provider 'nope', which is not defined"),
    ("[transcription]\nmodel = \"whisper-1\"", "transcription.provider: is required"),
])
def test_bad_attachment_config_names_the_key(tmp_path: Path, extra: str, expected: str):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, BASE + "\n" + extra + "\n"))
    assert expected in str(caught.value)


async def test_a_large_image_is_scaled_down_before_it_goes_to_the_models():
    big = picture("PNG", (4000, 1000))
    transparent = io.BytesIO()
    Image.new("RGBA", (3000, 3000), (0, 0, 0, 0)).save(transparent, "PNG")
    files = Files(big=big, clear=transparent.getvalue())
    prepared = await AttachmentIntake(AttachmentSettings()).prepare(
        files, [att("big", "image", "wide.png", "image/png"), att("clear", "image", "clear.png", "image/png")], "")
    wide, clear = prepared.images
    assert (wide.media_type, wide.width, wide.height) == ("image/jpeg", 2048, 512)
    with Image.open(io.BytesIO(wide.data)) as sent:
        assert sent.size == (2048, 512)
    assert (clear.media_type, clear.width, clear.height) == ("image/png", 2048, 2048)
