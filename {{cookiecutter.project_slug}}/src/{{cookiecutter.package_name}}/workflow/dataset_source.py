"""Where a dataset comes from: a folder, a zip checked before anything is extracted, or a download.

`prepare` (dataset.py) takes a folder, a zip, an https:// URL or an s3:// URI. A zip's directory is
checked first (member count and sizes, expansion ratio, free space, names that would land on one
file); a download is bounded in time, shows its progress and leaves no partial file behind.
"""

from __future__ import annotations

import http.client
import re
import tempfile
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

# Bounds on a zip, checked on its directory before anything is extracted. Image files barely compress
# (JPEG, PNG, WebP are compressed already): a member that expands over a hundredfold is a zip bomb, not
# a photo, and no image this project can decode needs 512 MiB of file.
MAX_ZIP_MEMBERS = 1_000_000


MAX_ZIP_MEMBER_BYTES = 512 * 2**20


MAX_ZIP_TOTAL_BYTES = 200 * 2**30


MAX_ZIP_RATIO = 100


# Members this small may compress well (a blank BMP) whatever they hold: their ratio is not judged.
ZIP_RATIO_EXEMPT_BYTES = 2**20


# A server silent this long (connecting, or between two reads) ends the download.
DOWNLOAD_TIMEOUT_SECONDS = 60


class DataError(Exception):
    """The source is not a dataset this project can use; the message says why."""


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https", "s3")


def download(url: str, destination: Path) -> Path:
    """Fetch `url` (http(s):// or s3://) into `destination` (a file), with a progress bar; kept if
    already there.

    The bytes go to `destination` + `.part`, renamed at the end: whatever stops the download (an
    HTTP or S3 error, a cut connection, a full disk, Ctrl-C) removes the `.part`, so no half file is
    left to be mistaken for the dataset.
    """
    if destination.is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(destination.suffix + ".part")
    fetch = download_s3 if url.startswith("s3://") else download_http
    try:
        fetch(url, partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(destination)
    return destination


def _progress() -> Progress:
    columns = (*Progress.get_default_columns()[:2], BarColumn(), DownloadColumn(), TransferSpeedColumn())
    return Progress(*columns)


def download_http(url: str, destination: Path) -> None:
    """Copy the file at an http(s) URL to `destination`. An HTTP error, a refused or cut connection
    (fewer bytes than the Content-Length said) or a server silent for DOWNLOAD_TIMEOUT_SECONDS is a
    DataError naming the URL (`download` removes what was written)."""
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response,
            destination.open("wb") as sink,
            _progress() as progress,
        ):
            size = int(response.headers.get("Content-Length") or 0) or None
            task = progress.add_task(f"download {destination.name.removesuffix('.part')}", total=size)
            received = 0
            while chunk := response.read(1 << 20):
                sink.write(chunk)
                received += len(chunk)
                progress.advance(task, len(chunk))
    except urllib.error.HTTPError as error:
        raise DataError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        text = " ".join(str(reason).split()) or type(reason).__name__
        raise DataError(f"cannot download {url}: {text}") from None
    # http.client ends a body cut short as if it were whole: only the count tells.
    if size is not None and received != size:
        raise DataError(
            f"cannot download {url}: the connection closed after {received:,} of {size:,} bytes; try again"
        )


def download_s3(url: str, destination: Path) -> None:
    """Copy the object at s3://bucket/key to `destination`, with the caller's AWS credentials.

    The schema lets [data] url be an s3:// URL (a dataset kept in the course's or your own bucket):
    boto3 fetches it as the http(s) branch fetches a public URL. A missing object, a refused request
    or no credentials is a DataError naming the URL (`download` removes what was written).
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise DataError(f"{url} names no object; expected s3://bucket/path/dataset.zip")
    try:
        s3 = boto3.client("s3")
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        with destination.open("wb") as sink, _progress() as progress:
            task = progress.add_task(f"download {Path(key).name}", total=size or None)
            s3.download_fileobj(bucket, key, sink, Callback=lambda sent: progress.advance(task, sent))
    except (BotoCoreError, ClientError) as error:
        code = error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""
        why = {"404": "no such object", "NoSuchKey": "no such object", "NoSuchBucket": "no such bucket"}
        reason = why.get(code) or ("access denied" if code in ("403", "AccessDenied") else str(error))
        raise DataError(f"cannot download {url}: {reason}") from None


def check_zip_bounds(archive: Path, members: list[zipfile.ZipInfo], free_bytes: int) -> None:
    """Refuse, in one line and before anything is extracted, a zip that would expand out of bounds."""
    if len(members) > MAX_ZIP_MEMBERS:
        raise DataError(f"{archive} holds {len(members):,} files; at most {MAX_ZIP_MEMBERS:,} are extracted")
    total = 0
    for member in members:
        total += member.file_size
        if member.file_size > MAX_ZIP_MEMBER_BYTES:
            raise DataError(
                f"{archive}: {member.filename} expands to {member.file_size:,} bytes; "
                f"no image needs more than {MAX_ZIP_MEMBER_BYTES:,}: not extracted"
            )
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > ZIP_RATIO_EXEMPT_BYTES and ratio > MAX_ZIP_RATIO:
            raise DataError(
                f"{archive}: {member.filename} expands {ratio:,.0f} times ({member.compress_size:,} to "
                f"{member.file_size:,} bytes); images expand at most {MAX_ZIP_RATIO} times: not extracted"
            )
    if total > MAX_ZIP_TOTAL_BYTES or total > free_bytes:
        bound = min(MAX_ZIP_TOTAL_BYTES, free_bytes)
        raise DataError(
            f"{archive} expands to {total:,} bytes, over {bound:,} (the free space of the scratch folder "
            f"{tempfile.gettempdir()}, or {MAX_ZIP_TOTAL_BYTES:,}): not extracted; set TMPDIR to a larger one"
        )


def check_zip_names(archive: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse, in one line and before anything is extracted, a zip two of whose files would be
    extracted to one file: the second would silently replace the first.

    Refused rather than renamed: a zip may hold one name twice (an archive appended to), and which
    copy was meant is not ours to guess; names that differ only in letter case, or in / and \\, are
    one file on macOS or Windows, and refusing them everywhere keeps a zip's dataset the same
    wherever it is prepared. The user renames one; nothing is dropped unseen.
    """
    seen: dict[str, str] = {}
    for member in members:
        if member.is_dir():
            continue
        key = _extracted_name(member.filename)
        if key not in seen:
            seen[key] = member.filename
            continue
        first = seen[key]
        which = f"{first!r} twice" if first == member.filename else f"{first!r} and {member.filename!r}"
        raise DataError(
            f"{archive} holds {which}, which would be extracted to one file (names that differ only in "
            "case, or in / and \\, are one file on macOS and Windows): not extracted; rename one and zip "
            "it again"
        )


def _extracted_name(name: str) -> str:
    """`name` as extraction writes it, in a form equal for names that land on one file on some system:
    ZipFile.extract drops a drive, a root, `.` and `..` (zip slip); Windows reads \\ as /; macOS and
    Windows ignore case, and macOS the Unicode normal form."""
    parts = name.replace("\\", "/").split("/")
    if parts and re.fullmatch(r"[A-Za-z]:", parts[0]):
        parts = parts[1:]
    kept = "/".join(part for part in parts if part not in ("", ".", ".."))
    return unicodedata.normalize("NFC", kept).casefold()
