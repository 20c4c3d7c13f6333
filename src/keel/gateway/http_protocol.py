"""uvicorn's httptools protocol with a bound on the request head.

httptools buffers a request's URL and headers whole before the app sees them, and uvicorn
sets no limit: one client sending a 64 MB header made the server hold it all in memory
before answering (measured). This protocol counts the bytes of each request head as they
arrive and answers 431 and closes the connection once they pass ``MAX_HEAD_BYTES``, before
any of keel runs. Bodies are not counted here (the app limits those per route).
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; browsers and SDKs send a few KiB
_BODY = b"request line and headers are larger than 65536 bytes; send fewer or shorter headers"
_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` that refuses request heads over ``MAX_HEAD_BYTES``."""

    _in_head = True  # until the first request's headers are complete
    _head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # counted after parsing: a chunk that completes the head may carry body bytes too,
        # while a chunk after which the head is still open was all head
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.transport.write(_431)
                self.transport.close()
