"""Test bed for the scheduler's HTTP endpoint: a loopback port into a namespace, HTTP, Chromium.

``Forward`` listens on 127.0.0.1 (port 0) in the root namespace and pipes
every connection to an address inside a ``NetnsBed`` host (the bed's hosts
are unreachable from the root namespace on purpose), so a browser started
here can load a scheduler's web view from a namespace cluster.  ``get``
fetches a URL, ``metrics`` parses ``/metrics`` with ``prometheus_client``'s
parser, ``browser`` starts Debian's headless ``chromium`` through Debian's
``chromium-driver`` with Selenium (no download: the driver path is given),
and ``check_png`` checks a screenshot (size, not blank).  Every wait is
bounded.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import urllib.request
import zlib
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.parser import text_string_to_metric_families
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from testbed import Host

CHROMIUM: Final = "/usr/bin/chromium"
CHROMEDRIVER: Final = "/usr/bin/chromedriver"
WINDOW: Final = (1440, 900)


class Forward:
    """127.0.0.1:``port`` in the root namespace → ``target`` as seen from ``host``."""

    def __init__(self, host: Host, target: tuple[str, int]) -> None:
        self._host = host
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.5)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe_pair, args=(client,), daemon=True).start()

    def _pipe_pair(self, client: socket.socket) -> None:
        try:
            upstream = self._host.socket()
            upstream.settimeout(5)
            upstream.connect(self._target)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets |= {client, upstream}
        other = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
        other.start()
        self._pipe(client, upstream)
        other.join(timeout=30)
        with self._lock:
            self._sockets -= {client, upstream}
        client.close()
        upstream.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop accepting and cut every piped connection."""
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET *url*; return the status and body (4xx and 5xx are returned, not raised)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own loopback URL
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics(text: str) -> Samples:
    """Parse the exposition *text*; return every sample by (name, sorted labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample *name* with exactly *labels*."""
    return samples[(name, tuple(sorted(labels.items())))]


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    """Headless Debian chromium driven by Debian's chromedriver; quit at the end."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars",
                     "--force-device-scale-factor=1", "--no-first-run",
                     "--disable-background-networking"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        # The viewport (not the window, which includes the browser's frame) is WINDOW.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False,
        })  # fmt: skip
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        yield driver
    finally:
        driver.quit()


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def png_colours(data: bytes, rows: int = 400) -> int:
    """How many distinct colours the top *rows* of an 8-bit RGB(A) PNG use (sampled)."""
    width, height = png_size(data)
    depth, colour_type, _, _, interlace = data[24:29]
    assert depth == 8, depth
    assert colour_type in (2, 6), colour_type
    assert interlace == 0, interlace
    channels = 3 if colour_type == 2 else 4
    raw, pos = b"", 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            raw += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    pixels = zlib.decompress(raw)
    stride = width * channels + 1
    previous = bytearray(width * channels)
    colours: set[bytes] = set()
    for row in range(min(rows, height)):
        line = bytearray(pixels[row * stride + 1 : (row + 1) * stride])
        _unfilter(pixels[row * stride], line, previous, channels)
        if row % 8 == 0:
            colours.update(bytes(line[i : i + 3]) for i in range(0, len(line), channels * 4))
        previous = line
    return len(colours)


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = previous[i]
        corner = previous[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (line[i] + pred) & 0xFF


def check_png(path: Path, size: tuple[int, int] = WINDOW) -> None:
    """*path* is a PNG of *size* with a real picture in it (not one flat colour)."""
    data = path.read_bytes()
    assert len(data) > 20_000, f"{path}: only {len(data)} bytes"
    assert png_size(data) == size, f"{path}: {png_size(data)} is not {size}"
    assert png_colours(data) >= 40, f"{path}: looks blank ({png_colours(data)} colours)"
