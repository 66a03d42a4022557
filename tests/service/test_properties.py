"""Property-based tests (hypothesis) for the parsers that see hostile input first.

Names, tags, references, digests, upload ``Content-Range`` and blob ``Range`` headers. Valid
inputs are generated from the grammar of the OCI distribution spec (written out here, not taken
from the implementation); arbitrary text must either be accepted exactly when the spec's grammar
accepts it or be refused with the typed registry error, never with anything else. Every accepted
repository name must map to a storage path strictly below the storage root.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from berth.api.blobs import parse_range
from berth.app import create_app
from berth.config import Settings
from berth.registry.digest import Digest
from berth.registry.errors import (
    BlobUploadUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameInvalid,
    RangeInvalid,
    RegistryError,
    TagInvalid,
)
from berth.registry.names import lookup_reference, parse_reference, validate_name, validate_tag
from berth.registry.uploads import parse_content_range, validate_upload_id
from berth.storage import paths
from berth.storage.filesystem import FilesystemDriver

# The spec's grammar (distribution-spec, "Pulling manifests"), independent of berth's regexes.
SPEC_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
SPEC_NAME = rf"{SPEC_COMPONENT}(?:/{SPEC_COMPONENT})*"
SPEC_TAG = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
SPEC_DIGEST = r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}"  # the algorithms berth supports
MAX_NAME = 255

PROPS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Characters that make parsers misbehave: separators, dots, escapes, NUL, newlines, Unicode
# digits (``"²".isdigit()`` is true but ``int("²")`` fails), confusables, surrogates.
HOSTILE_CHARS = (
    "aZ09._-/\\:%2eEfF \t\n\r\x00\x7f+@~*?#"
    "²³¹\u0661\u0662\u07c0\uff10\uff11\u0131\u0130\u200b\ud800é/"
)
hostile_text = st.text(alphabet=HOSTILE_CHARS, max_size=40)
any_text = st.one_of(st.text(max_size=300), hostile_text)

# Generated from the grammar's parts (faster and better spread than st.from_regex here).
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_alnum_run = st.text(alphabet=_ALNUM, min_size=1, max_size=12)
_separator = st.sampled_from([".", "_", "__", "-", "--", "----"])
_component = st.builds(
    lambda first, rest: first + "".join(sep + run for sep, run in rest),
    _alnum_run,
    st.lists(st.tuples(_separator, _alnum_run), max_size=4),
)
names = (
    st.lists(_component, min_size=1, max_size=8).map("/".join).filter(lambda s: len(s) <= MAX_NAME)
)
_TAG_CHARS = _ALNUM + "ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
tags = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(_TAG_CHARS),
    st.one_of(
        st.text(alphabet=_TAG_CHARS + ".-", max_size=20),
        st.text(alphabet=_TAG_CHARS + ".-", max_size=127),
    ),
)


def _spec_name(text: str) -> bool:
    return len(text) <= MAX_NAME and re.fullmatch(SPEC_NAME, text) is not None


def _spec_tag(text: str) -> bool:
    return re.fullmatch(SPEC_TAG, text) is not None


def _spec_digest(text: str) -> bool:
    return re.fullmatch(SPEC_DIGEST, text) is not None


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A valid value with hostile text inserted somewhere (often just before or after it)."""
    value = draw(base)
    where = draw(st.sampled_from([0, len(value), draw(st.integers(0, len(value)))]))
    insert = draw(
        st.one_of(
            st.sampled_from(["..", "/..", "../", "/", "//", ".", "\n", "\x00", "%2e", "\\", "A"]),
            hostile_text,
        )
    )
    return value[:where] + insert + value[where:]


@pytest.fixture(scope="module")
def driver() -> Iterator[FilesystemDriver]:
    with tempfile.TemporaryDirectory() as tmp:
        yield FilesystemDriver(Path(tmp) / "root")


# --- repository names ----------------------------------------------------------------------


@PROPS
@given(names)
@example("a" * MAX_NAME)
@example("a/b/c")
@example("a__b/c-----d/e.f_g")
def test_valid_names_accepted(name: str) -> None:
    assert validate_name(name) == name


@PROPS
@given(st.one_of(any_text, mutated(names)))
@example("foo\n")
@example("foo/\n")
@example("../foo")
@example("foo/../bar")
@example("foo/./bar")
@example("/foo")
@example("foo/")
@example("foo//bar")
@example("Foo")
@example("a" * (MAX_NAME + 1))
@example("_uploads")
@example("foo/_manifests")
def test_name_accepted_exactly_by_spec_grammar(text: str) -> None:
    try:
        result = validate_name(text)
    except NameInvalid:
        assert not _spec_name(text), f"spec-valid name refused: {text!r}"
    else:
        assert result == text
        assert _spec_name(text), f"accepted a name outside the spec's grammar: {text!r}"


@PROPS
@given(st.one_of(names, any_text, mutated(names)))
@example("..")
@example("foo/..")
@example("foo\n")
def test_accepted_names_never_escape_storage_root(driver: FilesystemDriver, text: str) -> None:
    try:
        name = validate_name(text)
    except NameInvalid:
        return
    components = name.split("/")
    assert all(c not in ("", ".", "..") for c in components), name
    assert not name.startswith("/")
    assert not any(c.startswith("_") for c in components), "could shadow _manifests/_uploads"
    repositories = (driver.root / paths.REPOSITORIES).resolve()
    digest = Digest("sha256", "0" * 64)
    for key in (
        paths.repository(name),
        paths.layer_link(name, digest),
        paths.revision_link(name, digest),
        paths.upload_data(name, "00000000-0000-0000-0000-000000000000"),
    ):
        resolved = driver._path(key).resolve()
        assert resolved.is_relative_to(repositories), (name, resolved)
        assert resolved != repositories


@pytest.fixture(scope="module")
def app_client() -> Iterator[tuple[asyncio.AbstractEventLoop, httpx.AsyncClient, Path]]:
    """One app on one event loop for a whole hypothesis run (sync test, async client)."""
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "registry"
        settings = Settings(
            storage={"filesystem": {"root": root}}, observability={"access_log": False}
        )
        transport = httpx.ASGITransport(app=create_app(settings))
        client = httpx.AsyncClient(transport=transport, base_url="http://registry")
        try:
            yield loop, client, root
        finally:
            loop.run_until_complete(client.aclose())
            loop.close()


BLOB = b"property blob"
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(names, any_text, mutated(names)))
@example("../../../../tmp/x")
@example("a/../../b")
@example("a/./b")
@example("a\\..\\b")
def test_names_through_http_never_escape_storage_root(
    app_client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient, Path], text: str
) -> None:
    """Any text as the name of a monolithic upload, percent-encoded (dots too, so that the
    client cannot normalise ``..`` away): the app answers 201 only for spec-valid names, never
    500, and every file it writes lies under ``docker/registry/v2/repositories/<name>/`` or
    the global blob store."""
    loop, client, root = app_client
    path = quote(text.encode("utf-8", "surrogatepass"), safe="/").replace(".", "%2E")
    r = loop.run_until_complete(
        client.post(f"/v2/{path}/blobs/uploads/", params={"digest": BLOB_DIGEST}, content=BLOB)
    )
    if r.status_code == 201:
        assert _spec_name(text), f"stored under a name outside the grammar: {text!r}"
        link = root / paths.layer_link(text, Digest.parse(BLOB_DIGEST))
        assert link.resolve().is_relative_to((root / paths.REPOSITORIES).resolve())
        assert link.is_file()
    else:
        assert r.status_code in (400, 404, 405), (text, r.status_code, r.text)
        assert r.json()["errors"][0]["code"] in ("NAME_INVALID", "NOT_FOUND", "UNSUPPORTED")
    v2 = (root / paths.ROOT).resolve()
    for file in root.rglob("*"):
        if not file.is_dir():
            assert file.resolve().is_relative_to(v2), file


# --- tags and references -------------------------------------------------------------------


@PROPS
@given(tags)
@example("a" * 128)
@example("_")
@example("v1.0.0-rc.1_build")
def test_valid_tags_accepted(tag: str) -> None:
    assert validate_tag(tag) == tag
    assert parse_reference(tag) == tag


@PROPS
@given(st.one_of(any_text, mutated(tags)))
@example("latest\n")
@example("..")
@example(".hidden")
@example("-dash")
@example("a" * 129)
@example("a/b")
@example("")
def test_tag_accepted_exactly_by_spec_grammar(text: str) -> None:
    try:
        result = validate_tag(text)
    except TagInvalid:
        assert not _spec_tag(text), f"spec-valid tag refused: {text!r}"
    else:
        assert result == text
        assert _spec_tag(text), f"accepted a tag outside the spec's grammar: {text!r}"
        assert "/" not in text and text not in (".", "..") and len(text) <= 128


@PROPS
@given(
    st.one_of(any_text, mutated(tags), tags, st.builds(lambda b: str(Digest.of(b)), st.binary()))
)
@example("sha256:" + "a" * 64 + "\n")
@example("latest:")
@example(":")
def test_reference_is_a_tag_or_a_digest_or_a_typed_error(text: str) -> None:
    try:
        ref = parse_reference(text)
    except (TagInvalid, DigestInvalid) as exc:
        if ":" in text:
            assert isinstance(exc, DigestInvalid)
            assert not _spec_digest(text)
        else:
            assert isinstance(exc, TagInvalid)
            assert not _spec_tag(text)
        return
    if isinstance(ref, Digest):
        assert _spec_digest(text) and str(ref) == text
    else:
        assert _spec_tag(text) and ref == text


@PROPS
@given(
    st.one_of(any_text, mutated(tags), tags, st.builds(lambda b: str(Digest.of(b)), st.binary()))
)
@example(".INVALID_MANIFEST_NAME")  # the conformance suite's nonexistent manifest
@example("sha256:abc")
@example("latest\n")
def test_looked_up_reference_is_unknown_unless_digest_shaped(text: str) -> None:
    """GET/HEAD/DELETE: what is neither a tag nor digest-shaped names nothing (404
    MANIFEST_UNKNOWN); a malformed digest is DIGEST_INVALID; TAG_INVALID never happens."""
    try:
        ref = lookup_reference(text)
    except DigestInvalid:
        assert ":" in text and not _spec_digest(text)
        return
    except ManifestUnknown as exc:
        assert exc.status == 404
        assert ":" not in text and not _spec_tag(text)
        return
    if isinstance(ref, Digest):
        assert _spec_digest(text) and str(ref) == text
    else:
        assert _spec_tag(text) and ref == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(any_text, mutated(tags)).map(lambda t: t.replace("/", "_")))  # one segment
@example(".INVALID_MANIFEST_NAME")
@example("sha256:abc")
@example("..")
def test_manifest_get_by_any_reference_is_404_or_digest_invalid(
    app_client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient, Path], text: str
) -> None:
    """Any text as a manifest reference (one path segment), percent-encoded, in a repository
    with no manifests: 404 (MANIFEST_UNKNOWN, or NOT_FOUND when no route takes the path), or
    400 DIGEST_INVALID for digest-shaped text; never TAG_INVALID, never a 5xx."""
    loop, client, _ = app_client
    path = quote(text.encode("utf-8", "surrogatepass"), safe="").replace(".", "%2E")
    r = loop.run_until_complete(client.get(f"/v2/props/app/manifests/{path}"))
    code = r.json()["errors"][0]["code"]
    if r.status_code == 400:
        assert code == "DIGEST_INVALID" and ":" in text, (text, r.text)
    else:
        assert r.status_code == 404, (text, r.status_code, r.text)
        assert code in ("MANIFEST_UNKNOWN", "NOT_FOUND"), (text, r.text)


# --- digests -------------------------------------------------------------------------------


@PROPS
@given(st.binary(max_size=256), st.sampled_from(["sha256", "sha512"]))
def test_digest_round_trip(data: bytes, algorithm: str) -> None:
    text = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    digest = Digest.parse(text)
    assert str(digest) == text
    assert digest == Digest.of(data, algorithm)


@PROPS
@given(
    st.sampled_from(["sha256", "sha512"]),
    st.text(alphabet="0123456789abcdef", max_size=200),
)
def test_digest_wrong_length_rejected(algorithm: str, hex_: str) -> None:
    expected = {"sha256": 64, "sha512": 128}[algorithm]
    if len(hex_) == expected:
        assert Digest.parse(f"{algorithm}:{hex_}").hex == hex_
    else:
        with pytest.raises(DigestInvalid):
            Digest.parse(f"{algorithm}:{hex_}")


@PROPS
@given(st.binary(max_size=64), st.sampled_from(["sha256", "sha512"]), st.data())
def test_digest_uppercase_and_unknown_algorithms_rejected(
    data: bytes, algorithm: str, draw: st.DataObject
) -> None:
    hex_ = hashlib.new(algorithm, data).hexdigest()
    upper = draw.draw(st.sampled_from(["hex", "algorithm", "both"]))
    if upper in ("hex", "both"):
        i = draw.draw(st.sampled_from([i for i, c in enumerate(hex_) if c.isalpha()] or [0]))
        hex_ = hex_[:i] + hex_[i].upper() + hex_[i + 1 :]
    alg = algorithm.upper() if upper in ("algorithm", "both") else algorithm
    if hex_ == hex_.lower() and alg == algorithm:
        return  # a digest with no letter to uppercase
    with pytest.raises(DigestInvalid):
        Digest.parse(f"{alg}:{hex_}")
    for other in ("sha384", "md5", "sha1", "blake3", "sha256+b64u", "sha-256", ""):
        with pytest.raises(DigestInvalid):
            Digest.parse(f"{other}:{hashlib.sha256(data).hexdigest()}")


@PROPS
@given(st.one_of(any_text, mutated(st.builds(lambda b: str(Digest.of(b)), st.binary()))))
@example("sha256:" + "a" * 64 + "\n")
@example("sha256:" + "a" * 64 + "\x00")
@example(" sha256:" + "a" * 64)
@example("sha256:" + "a" * 63 + "\u0663")
def test_digest_accepted_exactly_by_grammar(text: str) -> None:
    try:
        digest = Digest.parse(text)
    except DigestInvalid:
        assert not _spec_digest(text)
    else:
        assert _spec_digest(text), f"accepted an invalid digest: {text!r}"
        assert str(digest) == text


# --- upload ids ----------------------------------------------------------------------------


@PROPS
@given(st.one_of(any_text, st.uuids().map(str), mutated(st.uuids().map(str))))
@example("../../../etc")
@example("00000000-0000-0000-0000-000000000000\n")
@example("00000000-0000-0000-0000-000000000000/..")
def test_upload_ids_are_uuids_or_unknown(text: str) -> None:
    try:
        assert validate_upload_id(text) == text
    except BlobUploadUnknown:
        assert not re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text
        )
    else:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text)


# --- Content-Range of upload chunks (``<start>-<end>``, inclusive) -------------------------

offsets = st.one_of(st.integers(0, 10**6), st.integers(0, 10**18))


@PROPS
@given(
    offsets,
    offsets,
    st.sampled_from(["{a}-{b}", "bytes {a}-{b}/*", "bytes {a}-{b}/{t}", " {a}-{b} "]),
)
def test_content_range_valid(a: int, b: int, form: str) -> None:
    start, end = min(a, b), max(a, b)
    text = form.format(a=start, b=end, t=end + 1)
    assert parse_content_range(text) == (start, end)


@PROPS
@given(offsets, offsets)
def test_content_range_reversed_rejected(a: int, b: int) -> None:
    if a == b:
        return
    with pytest.raises(RangeInvalid):
        parse_content_range(f"{max(a, b)}-{min(a, b)}")


@PROPS
@given(offsets, offsets)
def test_content_range_negative_rejected(a: int, b: int) -> None:
    for text in (f"-{a}-{b}", f"{a}--{b}", f"-{a}--{b}", f"{a}-", f"-{b}", f"{a}+{b}"):
        with pytest.raises(RangeInvalid):
            parse_content_range(text)


@PROPS
@given(st.integers(0, 10**60), st.integers(0, 10**60))
def test_content_range_huge_numbers_never_crash(a: int, b: int) -> None:
    text = f"{a}-{b}"
    try:
        assert parse_content_range(text) == (a, b)
    except RangeInvalid:
        assert b < a or len(text) > 40


def _content_range_core(text: str) -> str:
    core = text.strip()
    if core.startswith("bytes "):
        core = core[6:].split("/", 1)[0]
    return core


@PROPS
@given(
    st.one_of(any_text, st.text(alphabet="0123456789-/ bytes²³¹\u0661\u0662\uff10", max_size=30))
)
@example("²-³")
@example("0-²")
@example("\u0661-\u0662")
@example("\uff10-\uff11")
@example("bytes ²-³/*")
def test_content_range_arbitrary_text(text: str) -> None:
    try:
        start, end = parse_content_range(text)
    except RangeInvalid as exc:
        assert exc.status == 416 and exc.code == "RANGE_INVALID"
        return
    assert 0 <= start <= end
    assert re.fullmatch(r"[0-9]+-[0-9]+", _content_range_core(text)), (
        f"accepted a Content-Range that is not <digits>-<digits>: {text!r}"
    )


# --- HTTP Range on blob GET ----------------------------------------------------------------

sizes = st.one_of(st.integers(0, 4), st.integers(0, 10**6), st.integers(0, 10**15))


@PROPS
@given(sizes, st.data())
def test_range_satisfiable(size: int, data: st.DataObject) -> None:
    if size == 0:
        return
    start = data.draw(st.integers(0, size - 1))
    end = data.draw(st.integers(start, size * 2))
    assert parse_range(f"bytes={start}-{end}", size) == (start, min(end, size - 1))
    assert parse_range(f"bytes={start}-", size) == (start, size - 1)
    n = data.draw(st.integers(1, size * 2))
    assert parse_range(f"bytes=-{n}", size) == (max(size - n, 0), size - 1)


def _assert_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeInvalid) as info:
        parse_range(header, size)
    assert info.value.status == 416
    assert info.value.headers == {"Content-Range": f"bytes */{size}"}


@PROPS
@given(sizes, st.integers(0, 10**20), st.integers(0, 10**20))
def test_range_unsatisfiable(size: int, a: int, b: int) -> None:
    # Starting at or past the end, reversed, or an empty suffix: 416 with ``bytes */size``.
    _assert_unsatisfiable(f"bytes={size + a}-{size + a + b}", size)
    _assert_unsatisfiable(f"bytes={size + a}-", size)
    if a != b:
        _assert_unsatisfiable(f"bytes={max(a, b)}-{min(a, b)}", size)
    _assert_unsatisfiable("bytes=-0", size)


@PROPS
@given(st.integers(1, 10**20))
@example(1)
def test_range_on_empty_blob_unsatisfiable(n: int) -> None:
    # A zero-length blob has no byte to serve: every byte range is unsatisfiable (RFC 9110).
    _assert_unsatisfiable(f"bytes=-{n}", 0)
    _assert_unsatisfiable("bytes=0-", 0)
    _assert_unsatisfiable(f"bytes=0-{n}", 0)


@PROPS
@given(sizes, st.integers(0, 100), st.integers(0, 100), st.integers(0, 100))
def test_range_several_ranges_or_other_units_ignored(size: int, a: int, b: int, c: int) -> None:
    # Overlapping or multiple ranges are not served as multipart: the whole blob is sent.
    assert parse_range(f"bytes={a}-{a + b},{a + c}-{a + b + c}", size) is None
    assert parse_range(f"bytes=0-{a},-{b}", size) is None
    assert parse_range(f"items={a}-{b}", size) is None


@PROPS
@given(
    st.one_of(
        any_text.map(lambda t: "bytes=" + t),
        any_text,
        st.text(alphabet="0123456789-=, bytes²³¹\u0661\u0662\uff10", max_size=40),
    ),
    sizes,
)
@example("bytes=²-", 10)
@example("bytes=0-²", 10)
@example("bytes=-²", 10)
@example("bytes=\u0661-\u0662", 10)
@example("bytes=-5", 0)
@example("bytes=-1", 0)
@example("bytes=" + "9" * 55, 10)
def test_range_arbitrary_text(header: str, size: int) -> None:
    try:
        span = parse_range(header, size)
    except RangeInvalid as exc:
        assert exc.status == 416 and exc.headers == {"Content-Range": f"bytes */{size}"}
        return
    except RegistryError as exc:  # pragma: no cover - any other typed error is a wrong mapping
        pytest.fail(f"{header!r}: {type(exc).__name__} instead of RANGE_INVALID or None")
    if span is not None:
        start, end = span
        assert 0 <= start <= end < size, (header, size, span)
        spec = header.partition("=")[2].strip()
        assert re.fullmatch(r"[0-9]*-[0-9]*", spec), f"served a non-ASCII range: {header!r}"
