"""`eldistill download`: fetch one published file (teacher pickle, reference statistics) safely.

- The bytes go to `OUT.part` and are renamed to OUT only after the size and sha256 check, so OUT is either
  absent or complete and verified.
- A `.part` left by an interrupted download is resumed (an HTTP Range request; file:// seeks).
- A file already at OUT is verified and kept: nothing is fetched again.
- Offline, the first connection attempt fails within `timeout` seconds with a message that names the file
  and where to put it by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20


class DownloadError(ValueError):
    """A download failed or did not verify; the message names the URL and the destination file."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, sha256: str | None, size: int | None, url: str, out: Path) -> None:
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise DownloadError(f"{out}: size is {actual_size} bytes, expected {size} (from {url})")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256.lower():
            raise DownloadError(f"{out}: sha256 is {actual}, expected {sha256.lower()} (from {url})")


def _open(url: str, offset: int, timeout: float):
    """(stream, total size or None, whether the stream starts at `offset`)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme else url)
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller
        total = os.fstat(f.fileno()).st_size
        f.seek(min(offset, total))
        return f, total, True
    request = urllib.request.Request(url, headers={"User-Agent": "eldistill"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    response = urllib.request.urlopen(request, timeout=timeout)
    length = response.headers.get("Content-Length")
    resumed = response.status == 206
    total = (int(length) + (offset if resumed else 0)) if length is not None else None
    return response, total, resumed


def download(
    url: str,
    out: str | Path,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 10.0,
) -> Path:
    """Fetch `url` to `out` (resuming `out.part`), verify size and sha256, rename atomically; returns `out`."""
    out = Path(out)
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256)):
        raise DownloadError(f"sha256 must be 64 hex digits, got {sha256!r} (for {out})")
    if out.exists():  # keep a good file; never silently replace a bad one
        try:
            _check(out, sha256, size, url, out)
        except DownloadError as e:
            raise DownloadError(f"{e}; the file already exists: delete it to download again") from None
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # a stale .part from another file
        part.unlink()
        offset = 0

    try:
        stream, total, resumed = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # Range not satisfiable: the .part already holds the whole file
            return _finish(part, out, sha256, size, url)
        raise DownloadError(f"could not download {out.name} from {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"could not download {out.name} from {url}: {reason}. If this machine is offline, fetch the file "
            f"elsewhere and put it at {out.resolve()}"
            + (f" (sha256 {sha256.lower()})" if sha256 else "")
            + (f"; {offset} bytes of it are kept in {part} and will be resumed" if offset else "")
        ) from None
    if not resumed:
        offset = 0
    if size is not None and total is not None and total != size:
        stream.close()
        raise DownloadError(f"{url} has {total} bytes, expected {size} (for {out}); is the URL right?")

    try:
        with stream, open(part, "ab" if offset else "wb") as f:
            bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=out.name)
            with bar:
                while block := stream.read(CHUNK):
                    f.write(block)
                    bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"download of {out.name} from {url} broke off ({e}); rerun to resume from {part}") from None

    return _finish(part, out, sha256, size, url)


def _finish(part: Path, out: Path, sha256: str | None, size: int | None, url: str) -> Path:
    try:
        _check(part, sha256, size, url, out)
    except DownloadError:
        part.unlink()  # resuming bad bytes would never verify
        raise
    os.replace(part, out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="http(s):// or file:// URL")
    parser.add_argument("--out", required=True, help="destination file")
    parser.add_argument("--sha256", default=None, help="expected sha256 (hex); checked before the rename")
    parser.add_argument("--size", type=int, default=None, help="expected size in bytes")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server")


def run(args: argparse.Namespace) -> int:
    try:
        path = download(args.url, args.out, sha256=args.sha256, size=args.size, timeout=args.timeout)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{path} ok")
    return 0
