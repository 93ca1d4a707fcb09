#!/usr/bin/env python3
"""Independent reference client for the Trebuchet wire protocol (JSON over WebSocket).

Written from docs/PROTOCOL.md alone, with nothing but the Python standard library, to show
that a server can be used by someone who only read the protocol document. It contains:

* a minimal RFC 6455 WebSocket client (upgrade handshake with a Sec-WebSocket-Accept check,
  masked client frames, 7/16/64-bit payload lengths, fragmented messages on read, ping -> pong,
  close handshake), and
* a conformance run against a server that hosts one actor, "counter", with the methods
  `increment(by: unsigned integer) -> integer` (the new value) and `get() -> integer`.

Usage:
    python3 tests/python/protocol_client.py ws://127.0.0.1:PORT/

Every check prints `ok   <name>` or `FAIL <name>: <why>`; the last line is
`protocol client: N passed, M failed` and the exit status is 0 only when nothing failed.
The counter may already have been used by other clients, so the checks look at relative
changes only; they do assume nobody else increments it while this script runs.
"""

import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time

# Every blocking socket operation gives up after this many seconds, so the run cannot hang.
TIMEOUT = 10.0

# The server's default frame limit (PROTOCOL.md: "Frame limit: 1 MiB by default").
FRAME_LIMIT = 1024 * 1024

ACTOR = "counter"

# RFC 6455 constants.
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
DATA_OPCODES = (OP_CONT, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
CLOSE_TOO_BIG = 1009

# Refuse to buffer absurd messages from a broken peer.
MAX_INCOMING_MESSAGE = 64 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class CheckFailed(Exception):
    """A conformance check saw something the protocol document does not allow."""


class WebSocketError(Exception):
    """The peer broke RFC 6455 (bad handshake, bad framing)."""


class ConnectionClosed(Exception):
    """The connection ended: a close frame (code/reason set), EOF, or a reset."""

    def __init__(self, how, code=None, reason=""):
        self.how = how  # "close frame", "EOF" or "connection reset"
        self.code = code  # close status code, if the close frame carried one
        self.reason = reason
        detail = f" code {code}" if code is not None else ""
        detail += f" reason {reason!r}" if reason else ""
        super().__init__(f"connection closed by server ({how}{detail})")


# --------------------------------------------------------------------------------------------
# Minimal WebSocket client (RFC 6455)
# --------------------------------------------------------------------------------------------


def parse_ws_url(url):
    """Split ws://host[:port][/path] into (host, port, path). wss:// is not supported."""
    if not url.startswith("ws://"):
        raise ValueError(f"only ws:// URLs are supported, got {url!r}")
    rest = url[len("ws://"):]
    authority, slash, path = rest.partition("/")
    path = "/" + path if slash else "/"
    if authority.startswith("["):  # IPv6 literal: [::1]:8080
        host, _, port = authority[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = authority.partition(":")
    if not host:
        raise ValueError(f"no host in {url!r}")
    return host, int(port) if port else 80, path


def mask_payload(key, data):
    """XOR data with the 4-byte masking key (RFC 6455 section 5.3), fast for large payloads."""
    n = len(data)
    if n == 0:
        return b""
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


class WebSocket:
    """One client WebSocket connection.

    recv_message() returns complete data messages as (OP_TEXT, str) or (OP_BINARY, bytes);
    control frames are handled underneath it: pings are answered with pongs, pongs are recorded
    in self.pongs, and a close frame is answered and raised as ConnectionClosed.
    """

    def __init__(self, url, timeout=TIMEOUT):
        self.timeout = timeout
        host, port, path = parse_ws_url(url)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self._buf = bytearray()  # bytes received but not yet parsed
        self._eof = False  # the peer closed its side
        self._close_sent = False
        self._closed = False
        self._fragments = None  # (opcode, [payloads]) of a fragmented message being read
        self._ready = []  # complete messages read while waiting for something else
        self.pongs = []  # payloads of the pongs received
        self.close_code = None
        try:
            self._handshake(host, port, path)
        except BaseException:
            self.sock.close()
            raise

    # ---- opening handshake ------------------------------------------------------------------

    def _handshake(self, host, port, path):
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        host_header = f"[{host}]" if ":" in host else host
        if port != 80:
            host_header += f":{port}"
        request = (
            f"GET {path} HTTP/1.1\r\n"
            f"Host: {host_header}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "\r\n"
        )
        self.sock.sendall(request.encode("ascii"))

        # Read up to the blank line; anything after it already belongs to the frame stream.
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > 64 * 1024:
                raise WebSocketError("handshake response headers too long")
            self._recv_more()
        head, _, rest = bytes(self._buf).partition(b"\r\n\r\n")
        self._buf = bytearray(rest)

        lines = head.decode("iso-8859-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            raise WebSocketError(f"upgrade refused: {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()

        if headers.get("upgrade", "").lower() != "websocket":
            raise WebSocketError(f"bad Upgrade header: {headers.get('upgrade')!r}")
        connection_tokens = [t.strip().lower() for t in headers.get("connection", "").split(",")]
        if "upgrade" not in connection_tokens:
            raise WebSocketError(f"bad Connection header: {headers.get('connection')!r}")
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode("ascii")).digest()).decode("ascii")
        if headers.get("sec-websocket-accept") != expected:
            raise WebSocketError(
                f"Sec-WebSocket-Accept is {headers.get('sec-websocket-accept')!r}, expected {expected!r}"
            )
        # We offered no extension and no subprotocol, so the server must not pick one.
        for unexpected in ("sec-websocket-extensions", "sec-websocket-protocol"):
            if headers.get(unexpected):
                raise WebSocketError(f"server selected {unexpected}: {headers[unexpected]!r} that was not offered")

    # ---- raw I/O ----------------------------------------------------------------------------

    def _recv_more(self):
        """Append at least one byte from the socket to the buffer, or raise."""
        if self._eof:
            raise ConnectionClosed("EOF")
        try:
            chunk = self.sock.recv(1 << 16)
        except socket.timeout:
            raise TimeoutError(f"no data from the server within {self.timeout:g} s") from None
        except ConnectionResetError:
            self._eof = True
            raise ConnectionClosed("connection reset") from None
        if not chunk:
            self._eof = True
            raise ConnectionClosed("EOF")
        self._buf += chunk

    def _read_exact(self, n):
        while len(self._buf) < n:
            self._recv_more()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _send_all(self, data):
        """Send all of data while also taking in what the server sends meanwhile.

        A server that refuses a large message may stop reading and answer at once; if we
        simply blocked in sendall() we could deadlock against its unread answer, or lose that
        answer to the TCP reset its close provokes. So before every chunk we move whatever has
        arrived into our own buffer, and we send with a short timeout so that a server that
        stops reading does not block us. Gives up after self.timeout seconds without progress.
        """
        view = memoryview(data)
        last_progress = time.monotonic()
        try:
            while view:
                if self._drain_nonblocking():
                    last_progress = time.monotonic()
                if time.monotonic() - last_progress > self.timeout:
                    raise TimeoutError(f"server neither read nor wrote for {self.timeout:g} s")
                self.sock.settimeout(0.05)
                try:
                    sent = self.sock.send(view[: 1 << 16])
                except socket.timeout:
                    continue  # not writable right now: go back to reading
                view = view[sent:]
                last_progress = time.monotonic()
        finally:
            self.sock.settimeout(self.timeout)

    def _drain_nonblocking(self):
        """Move bytes that have already arrived into the buffer without waiting.
        Returns True if any arrived; raises ConnectionClosed at EOF or reset."""
        if self._eof:
            return False  # nothing more will arrive; the send itself will fail if it must
        got = False
        self.sock.settimeout(0.0)
        try:
            while True:
                try:
                    chunk = self.sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    return got
                except ConnectionResetError:
                    self._eof = True
                    raise ConnectionClosed("connection reset") from None
                if not chunk:
                    self._eof = True
                    raise ConnectionClosed("EOF")
                self._buf += chunk
                got = True
        finally:
            self.sock.settimeout(self.timeout)

    # ---- frames -----------------------------------------------------------------------------

    def send_frame(self, opcode, payload=b"", fin=True):
        """Send one frame. Client frames are always masked (RFC 6455 section 5.1)."""
        if self._closed:
            raise ConnectionClosed("EOF")
        header = bytearray([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header.append(0x80 | 126)
            header += struct.pack("!H", n)
        else:
            header.append(0x80 | 127)
            header += struct.pack("!Q", n)
        key = os.urandom(4)
        header += key
        self._send_all(bytes(header) + mask_payload(key, payload))

    def send_text(self, text, fragment_size=None, ping_between_fragments=None):
        """Send a text message, optionally split into fragments of fragment_size bytes, with an
        optional ping (payload ping_between_fragments) injected after the first fragment."""
        data = text.encode("utf-8")
        if not fragment_size or len(data) <= fragment_size:
            self.send_frame(OP_TEXT, data)
            return
        pieces = [data[i : i + fragment_size] for i in range(0, len(data), fragment_size)]
        for i, piece in enumerate(pieces):
            self.send_frame(OP_TEXT if i == 0 else OP_CONT, piece, fin=(i == len(pieces) - 1))
            if i == 0 and ping_between_fragments is not None:
                self.send_frame(OP_PING, ping_between_fragments)

    def _read_frame(self):
        """Read one frame: returns (fin, opcode, payload)."""
        b1, b2 = self._read_exact(2)
        fin, rsv, opcode = bool(b1 & 0x80), b1 & 0x70, b1 & 0x0F
        if rsv:
            raise WebSocketError(f"RSV bits set ({rsv:#x}) but no extension was negotiated")
        if opcode not in DATA_OPCODES + CONTROL_OPCODES:
            raise WebSocketError(f"unknown opcode {opcode:#x}")
        if b2 & 0x80:
            raise WebSocketError("server frames must not be masked")
        length = b2 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
            if length >> 63:
                raise WebSocketError("64-bit payload length has its most significant bit set")
        if opcode in CONTROL_OPCODES and (not fin or length > 125):
            raise WebSocketError("control frames must be unfragmented and at most 125 bytes")
        if length > MAX_INCOMING_MESSAGE:
            raise WebSocketError(f"frame of {length} bytes is larger than this client accepts")
        return fin, opcode, self._read_exact(length)

    def _pump(self):
        """Read and handle one frame. Returns a complete data message, or None."""
        fin, opcode, payload = self._read_frame()

        if opcode == OP_PING:
            if not self._close_sent:
                try:
                    self.send_frame(OP_PONG, payload)
                except (OSError, ConnectionClosed):
                    pass  # the connection is going away; the next read will tell
            return None
        if opcode == OP_PONG:
            self.pongs.append(payload)
            return None
        if opcode == OP_CLOSE:
            code, reason = None, ""
            if len(payload) == 1:
                raise WebSocketError("close frame with a 1-byte payload")
            if len(payload) >= 2:
                (code,) = struct.unpack("!H", payload[:2])
                reason = payload[2:].decode("utf-8", errors="replace")
            self.close_code = code
            if not self._close_sent:  # answer the closing handshake, then drop the socket
                try:
                    self._close_sent = True
                    self.send_frame(OP_CLOSE, payload[:2])
                except (OSError, ConnectionClosed):
                    pass
            self._shutdown()
            raise ConnectionClosed("close frame", code, reason)

        # Data frames: a message is either one frame with FIN, or a text/binary frame without
        # FIN followed by continuation frames, the last one with FIN.
        if opcode == OP_CONT:
            if self._fragments is None:
                raise WebSocketError("continuation frame without a message to continue")
            self._fragments[1].append(payload)
            if sum(len(p) for p in self._fragments[1]) > MAX_INCOMING_MESSAGE:
                raise WebSocketError("fragmented message too large")
        else:
            if self._fragments is not None:
                raise WebSocketError("new data message started inside a fragmented message")
            self._fragments = (opcode, [payload])
        if not fin:
            return None
        opcode, pieces = self._fragments
        self._fragments = None
        data = b"".join(pieces)
        if opcode == OP_TEXT:
            try:
                return OP_TEXT, data.decode("utf-8")
            except UnicodeDecodeError:
                raise WebSocketError("text message is not valid UTF-8") from None
        return OP_BINARY, data

    def recv_message(self):
        """Return the next complete data message as (opcode, str or bytes)."""
        if self._ready:
            return self._ready.pop(0)
        while True:
            message = self._pump()
            if message is not None:
                return message

    def wait_for_pong(self, payload):
        """Read until a pong with this payload arrives; data messages read meanwhile are kept
        for recv_message()."""
        while payload not in self.pongs:
            message = self._pump()
            if message is not None:
                self._ready.append(message)
        self.pongs.remove(payload)

    # ---- closing ----------------------------------------------------------------------------

    def _shutdown(self):
        self._closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def close(self, code=1000):
        """Start the closing handshake, wait briefly for the server's close, drop the socket."""
        if self._closed:
            return
        try:
            if not self._close_sent:
                self._close_sent = True
                self.send_frame(OP_CLOSE, struct.pack("!H", code))
            self.sock.settimeout(2.0)
            while True:  # discard anything still in flight until the server's close frame
                self._pump()
        except (ConnectionClosed, OSError, WebSocketError):
            pass
        finally:
            self._shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# Protocol client: JSON envelopes over WebSocket text messages
# --------------------------------------------------------------------------------------------


class Client:
    """Sends JSON envelopes and reads JSON envelopes on one WebSocket connection."""

    def __init__(self, url):
        self.ws = WebSocket(url)
        self._next_call_id = 1

    def new_call_id(self):
        call_id = self._next_call_id
        self._next_call_id += 1
        return call_id

    def send(self, envelope):
        self.ws.send_text(json.dumps(envelope))

    def send_raw(self, text):
        self.ws.send_text(text)

    def invoke(self, method, args=None, actor=ACTOR, metadata=None, call_id=None):
        """Send an invocation without waiting. args=None omits the field. Returns the callId."""
        if call_id is None:
            call_id = self.new_call_id()
        envelope = {"type": "invocation", "callId": call_id, "actorId": actor, "method": method}
        if args is not None:
            envelope["args"] = args
        if metadata is not None:
            envelope["metadata"] = metadata
        self.send(envelope)
        return call_id

    def recv(self):
        """Next envelope. We only send text frames, so the server must answer in text."""
        opcode, data = self.ws.recv_message()
        if opcode != OP_TEXT:
            raise CheckFailed(f"got a binary message although only text was sent: {data[:60]!r}")
        try:
            envelope = json.loads(data)
        except ValueError:
            raise CheckFailed(f"server sent text that is not JSON: {data[:200]!r}") from None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str):
            raise CheckFailed(f"server sent JSON that is not an envelope: {data[:200]!r}")
        return envelope

    def recv_response(self, call_id):
        """Next envelope, which must be the response to call_id."""
        envelope = self.recv()
        if envelope.get("type") != "response" or envelope.get("callId") != call_id:
            raise CheckFailed(f"expected the response to callId {call_id}, got {short(envelope)}")
        return envelope

    def call(self, method, args=None, **kwargs):
        """Invoke and wait for the matching response (nothing else may arrive in between)."""
        return self.recv_response(self.invoke(method, args, **kwargs))

    def get(self):
        return int_result(self.call("get", {}), "get")

    def close(self):
        self.ws.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def short(value, limit=300):
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "…"


def int_result(response, what):
    """The integer `result` of a successful response, or CheckFailed."""
    if "error" in response:
        raise CheckFailed(f"{what} failed: {short(response['error'])}")
    if "result" not in response:
        raise CheckFailed(f"{what}: response has neither result nor error: {short(response)}")
    result = response["result"]
    if not isinstance(result, int) or isinstance(result, bool):
        raise CheckFailed(f"{what}: result is not an integer: {short(result)}")
    return result


MISSING = object()


def expect_error(response, code, call_id=MISSING, what="call"):
    """Check that response is an error response with this code.

    call_id: the callId the response must carry; None means the callId must be absent;
    a tuple lists the acceptable values (None meaning "absent").
    """
    if response.get("type") != "response":
        raise CheckFailed(f"{what}: expected a response envelope, got {short(response)}")
    error = response.get("error")
    if not isinstance(error, dict):
        raise CheckFailed(f"{what}: expected error {code!r}, got {short(response)}")
    if error.get("code") != code:
        raise CheckFailed(f"{what}: expected error code {code!r}, got {short(error)}")
    if not isinstance(error.get("message"), str):
        raise CheckFailed(f"{what}: error object has no string message: {short(error)}")
    if call_id is not MISSING:
        allowed = call_id if isinstance(call_id, tuple) else (call_id,)
        if "callId" in response and response["callId"] is None:
            # PROTOCOL.md: a response whose callId could not be read *omits* callId.
            got = "null"
        else:
            got = response.get("callId")
        if got not in allowed:
            wanted = " or ".join("no callId" if c is None else f"callId {c}" for c in allowed)
            shown = "no callId" if "callId" not in response else f"callId {json.dumps(response['callId'])}"
            raise CheckFailed(f"{what}: expected {wanted}, got {shown}: {short(response)}")


def check_consecutive(results, what):
    """results must be distinct integers forming one run n, n+1, …"""
    ordered = sorted(results)
    if ordered != list(range(ordered[0], ordered[0] + len(ordered))):
        raise CheckFailed(f"{what}: results are not {len(results)} consecutive integers: {ordered}")
    return ordered


def read_results(client, call_ids, what):
    """Read one response per callId (any order); return {callId: integer result}."""
    results = {}
    for _ in call_ids:
        response = client.recv()
        call_id = response.get("callId")
        if response.get("type") != "response" or call_id not in call_ids:
            raise CheckFailed(f"{what}: unexpected envelope {short(response)}")
        if call_id in results:
            raise CheckFailed(f"{what}: callId {call_id} answered twice")
        results[call_id] = int_result(response, f"{what} callId {call_id}")
    return results


# --------------------------------------------------------------------------------------------
# Conformance checks. Each opens its own connection(s), so one failure cannot cascade.
# --------------------------------------------------------------------------------------------

CHECKS = []


def check(name):
    def register(function):
        CHECKS.append((name, function))
        return function

    return register


def assert_usable(client, what):
    """The connection still answers an ordinary call correctly."""
    try:
        client.get()
    except (CheckFailed, ConnectionClosed, TimeoutError) as e:
        raise CheckFailed(f"connection not usable after {what}: {e}") from None


@check("1 get, increment {by:5}, get")
def check_basic(url):
    with Client(url) as c:
        before = c.get()
        after = int_result(c.call("increment", {"by": 5}), "increment")
        if after != before + 5:
            raise CheckFailed(f"get returned {before}, increment by 5 returned {after}")
        again = c.get()
        if again != after:
            raise CheckFailed(f"increment returned {after} but the following get returned {again}")


@check("2 multiplexing: 20 increments in flight on one connection")
def check_multiplexing(url):
    with Client(url) as c:
        call_ids = [c.invoke("increment", {"by": 1}) for _ in range(20)]
        results = read_results(c, set(call_ids), "increment")
        check_consecutive(list(results.values()), "20 increments")


@check("2b calls to one actor run in the order they were sent")
def check_actor_order(url):
    # PROTOCOL.md: "Calls to the *same actor* run one at a time, in the order the server
    # received them". On one connection that is the order we sent them, so the increments
    # must return ascending values in callId order (the responses may still arrive in any order).
    with Client(url) as c:
        call_ids = [c.invoke("increment", {"by": 1}) for _ in range(20)]
        results = read_results(c, set(call_ids), "increment")
        in_sent_order = [results[call_id] for call_id in call_ids]
        if in_sent_order != sorted(in_sent_order):
            raise CheckFailed(f"results in the order the calls were sent: {in_sent_order}")


@check("3a get with args omitted")
def check_args_omitted(url):
    with Client(url) as c:
        c.invoke("get", call_id=1)  # no "args" field at all
        int_result(c.recv_response(1), "get without args")


@check("3b get with metadata (traceparent)")
def check_metadata(url):
    with Client(url) as c:
        metadata = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        int_result(c.call("get", {}, metadata=metadata), "get with metadata")


@check("4a unknown method -> unknown_method")
def check_unknown_method(url):
    with Client(url) as c:
        call_id = c.invoke("incremnt", {"by": 1})
        expect_error(c.recv(), "unknown_method", call_id, "unknown method")


@check("4b unknown actor -> unknown_actor")
def check_unknown_actor(url):
    with Client(url) as c:
        call_id = c.invoke("get", {}, actor="no-such-actor")
        expect_error(c.recv(), "unknown_actor", call_id, "unknown actor")


@check("5a wrong argument type {by:\"five\"} -> bad_request")
def check_wrong_arg_type(url):
    with Client(url) as c:
        call_id = c.invoke("increment", {"by": "five"})
        expect_error(c.recv(), "bad_request", call_id, "wrong argument type")
        assert_usable(c, "a wrong argument type")


@check("5b missing argument {} -> bad_request")
def check_missing_arg(url):
    with Client(url) as c:
        call_id = c.invoke("increment", {})
        expect_error(c.recv(), "bad_request", call_id, "missing argument")
        assert_usable(c, "a missing argument")


@check("6a non-JSON text frame -> bad_request without callId; connection usable")
def check_not_json(url):
    with Client(url) as c:
        c.send_raw("{not json")
        expect_error(c.recv(), "bad_request", None, "non-JSON frame")
        assert_usable(c, "a non-JSON frame")


@check("6b envelope missing required fields -> bad_request with its callId; connection usable")
def check_missing_fields(url):
    with Client(url) as c:
        c.send({"type": "invocation", "callId": 41})  # no actorId, no method
        expect_error(c.recv(), "bad_request", 41, "invocation without actorId/method")
        assert_usable(c, "an incomplete envelope")


@check("6c unknown envelope type -> bad_request; connection usable")
def check_unknown_type(url):
    with Client(url) as c:
        c.send({"type": "frobnicate", "callId": 42})
        # Whether the callId of an envelope of unknown type "could be read" is left open by
        # the document, so both an echoed callId and none are accepted.
        expect_error(c.recv(), "bad_request", (42, None), "unknown type")
        assert_usable(c, "an unknown envelope type")


@check("7 response envelope sent by the client -> bad_request")
def check_client_response(url):
    with Client(url) as c:
        c.send({"type": "response", "callId": 43, "result": 1})
        expect_error(c.recv(), "bad_request", (43, None), "client-sent response")
        assert_usable(c, "a client-sent response")


@check("8 cancel for a callId not in flight: no answer, connection usable")
def check_cancel_unknown(url):
    with Client(url) as c:
        c.send({"type": "cancel", "callId": 424242})
        call_id = c.invoke("get", {})
        response = c.recv()  # must already be the get's answer: nothing for the cancel
        if response.get("type") != "response" or response.get("callId") != call_id:
            raise CheckFailed(f"expected the get's response (callId {call_id}), got {short(response)}")
        int_result(response, "get after cancel")


@check("9 oversize frame (2 MiB) -> payload_too_large, connection closed, server keeps serving")
def check_oversize(url):
    with Client(url) as c:
        big = "x" * (2 * FRAME_LIMIT)
        try:
            c.invoke("increment", {"by": big}, call_id=44)
        except (ConnectionClosed, BrokenPipeError, ConnectionResetError):
            pass  # the server may stop reading and close before all 2 MiB are sent
        try:
            response = c.recv()
        except ConnectionClosed as e:
            hint = ""
            if e.how == "connection reset":
                hint = (" - a server that closes its socket while our unread bytes are still"
                        " queued makes TCP send a reset, which can destroy its own response")
            raise CheckFailed(f"no payload_too_large response before the close ({e}){hint}") from None
        expect_error(response, "payload_too_large", None, "2 MiB frame")
        # Now the server must close the connection: a close frame (1009), EOF, or a reset.
        try:
            extra = c.recv()
            raise CheckFailed(f"connection still open after payload_too_large; got {short(extra)}")
        except TimeoutError:
            raise CheckFailed(f"connection still open {TIMEOUT:g} s after payload_too_large") from None
        except ConnectionClosed as e:
            if e.how == "close frame" and e.code is not None and e.code != CLOSE_TOO_BIG:
                raise CheckFailed(f"close code {e.code}, expected {CLOSE_TOO_BIG}") from None
    with Client(url) as other:
        other.get()


@check("10 4 connections x 25 increments in flight -> exactly +100")
def check_concurrent_connections(url):
    with Client(url) as probe:
        before = probe.get()
        clients = [Client(url) for _ in range(4)]
        try:
            sent = [[] for _ in clients]
            for _ in range(25):  # interleave the sends across the connections
                for i, c in enumerate(clients):
                    sent[i].append(c.invoke("increment", {"by": 1}))
            seen = []
            for i, c in enumerate(clients):
                seen += read_results(c, set(sent[i]), f"connection {i + 1}").values()
        finally:
            for c in clients:
                c.close()
        # One actor runs one call at a time, so the 100 increments return 100 distinct values.
        ordered = check_consecutive(seen, "100 increments")
        if ordered != list(range(before + 1, before + 101)):
            raise CheckFailed(f"get was {before} before, increments returned {ordered[0]}..{ordered[-1]}")
        after = probe.get()
        if after != before + 100:
            raise CheckFailed(f"get was {before} before and {after} after 100 increments")


@check("11 WebSocket: fragmented message with a ping inside is read; ping answered by pong")
def check_websocket_fragments(url):
    # Not a PROTOCOL.md rule but RFC 6455 (5.4, 5.5.2): a message may arrive in fragments,
    # with control frames between them, and a ping must be answered by a pong.
    with Client(url) as c:
        text = json.dumps({"type": "invocation", "callId": 45, "actorId": ACTOR, "method": "get", "args": {}})
        c.ws.send_text(text, fragment_size=10, ping_between_fragments=b"trebuchet")
        c.ws.wait_for_pong(b"trebuchet")
        int_result(c.recv_response(45), "fragmented get")


# --------------------------------------------------------------------------------------------


def await_response_and_item(client, call_id, stream_id, what):
    """The response to call_id and one streamData of stream_id, in whichever order they come."""
    response = item = None
    while response is None or item is None:
        envelope = client.recv()
        kind = envelope.get("type")
        if kind == "response" and envelope.get("callId") == call_id and response is None:
            response = int_result(envelope, what)
        elif kind == "streamData" and envelope.get("streamId") == stream_id and item is None:
            item = envelope
        else:
            raise CheckFailed(f"{what}: unexpected {short(envelope)}")
    if item.get("data") != response:
        raise CheckFailed(f"{what}: the stream item {short(item)} is not the new value {response}")
    return item


@check("12 stream: observe -> streamStart, a streamData per change; after the connection is lost, "
       "streamResume on a new one goes on with the same streamId; cancel by the resume's callId")
def check_stream_resume(url):
    first = Client(url)
    try:
        call_id = first.invoke("observe", {})
        start = first.recv()
        if start.get("type") != "streamStart" or start.get("callId") != call_id:
            raise CheckFailed(f"expected streamStart for callId {call_id}, got {short(start)}")
        stream_id = start.get("streamId")
        if not isinstance(stream_id, str) or not stream_id:
            raise CheckFailed(f"streamStart without a streamId: {short(start)}")
        item = await_response_and_item(first, first.invoke("increment", {"by": 1}), stream_id,
                                       "increment while observing")
        if item.get("sequenceNumber") != 1:
            raise CheckFailed(f"first item numbered {item.get('sequenceNumber')}, not 1")
    finally:
        first.close()  # the connection goes away; the stream was not cancelled
    with Client(url) as second:
        resume_call = 900
        second.send({"type": "streamResume", "streamId": stream_id, "lastSequence": 1,
                     "actorId": ACTOR, "method": "observe", "args": {}, "callId": resume_call})
        item = await_response_and_item(second, second.invoke("increment", {"by": 1}), stream_id,
                                       "increment after streamResume")
        if item.get("sequenceNumber") != 2:
            raise CheckFailed(f"the resumed stream's next item is numbered "
                              f"{item.get('sequenceNumber')}, not 2")
        second.send({"type": "cancel", "callId": resume_call})
        # After the cancel the stream sends nothing more: a change is answered with its response
        # alone.
        call_id = second.invoke("increment", {"by": 1})
        int_result(second.recv_response(call_id), "increment after cancelling the stream")
        assert_usable(second, "cancelling a resumed stream")


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} ws://HOST:PORT/", file=sys.stderr)
        return 2
    url = argv[1]
    try:
        parse_ws_url(url)
    except ValueError as e:
        print(f"{argv[0]}: {e}", file=sys.stderr)
        return 2
    passed = failed = 0
    started = time.monotonic()
    for name, function in CHECKS:
        try:
            function(url)
        except CheckFailed as e:
            why = str(e)
        except (ConnectionClosed, WebSocketError, TimeoutError, OSError) as e:
            why = f"{type(e).__name__}: {e}"
        except Exception as e:  # a bug in this script must not hide the remaining checks
            why = f"unexpected {type(e).__name__}: {e}"
        else:
            passed += 1
            print(f"ok   {name}", flush=True)
            continue
        failed += 1
        print(f"FAIL {name}: {why}", flush=True)
    print(f"({time.monotonic() - started:.1f} s)", file=sys.stderr)
    print(f"protocol client: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
