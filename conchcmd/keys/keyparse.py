"""Reading SSH keys with Conch's parser, with every way it can fail turned into one conchcmd error.

Conch and cryptography raise BadKeyError, ValueError, struct.error, IndexError, TypeError,
NotImplementedError (a compressed EC point), UnsupportedAlgorithm or EncryptedKeyError for input
they cannot read; callers catch KeyParseError alone.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from twisted.conch.ssh.keys import BadKeyError, EncryptedKeyError, Key

from conchcmd.keys import sodium
from conchcmd.keys.keyfile import LINE_KEY_TYPES, KeyField
from conchcmd.keys.sk import SK_KEY_TYPES, SkError, WireReader, parse_sk_public_key

#: What Conch's and cryptography's key parsers raise for input they cannot read.
_PARSER_ERRORS: tuple[type[Exception], ...] = (
    BadKeyError,
    ValueError,
    struct.error,
    IndexError,
    TypeError,
    NotImplementedError,
    UnsupportedAlgorithm,
)


class KeyParseError(ValueError):
    """A key conchcmd cannot read: malformed, of an unknown type, or not the type its line names.

    The message says why, without naming Python exception classes only a programmer knows."""


class KeyTypeMismatch(KeyParseError):
    """A line names one key type and its blob holds another."""


class EncryptedKeyFile(KeyParseError):
    """A private key protected by a passphrase: conchcmd runs unattended and has no one to ask for it."""

    def __init__(self, path: str):
        self.path = path
        self.fix = f'remove the passphrase with `ssh-keygen -p -N "" -f {path}`, or move the file away'
        super().__init__(f"{path} is encrypted with a passphrase; conchcmd needs an unencrypted host key")


class PublicKey(Key):
    """Conch's Key for a key read from its blob (or a host key, see HostKey), with its type worked
    out once: Conch's `type()` runs isinstance checks against cryptography's ABCs at every call,
    and a login asks for it a dozen times (`sshType`, `verify`, the policy checks). A key's type
    never changes. Its Ed25519 signatures are verified by libsodium (`verify`): every key that
    signs a login is one (the policy's types say so)."""

    _type: Literal["RSA", "DSA", "EC", "Ed25519"] | None = None
    _ssh_type: bytes | None = None
    _blob: bytes | None = None  # the blob as ssh-keygen writes it (set by public_key_from_blob)
    _raw_public: bytes | None = None  # an Ed25519 key's 32 bytes, for `verify`

    def blob(self) -> bytes:
        if self._blob is None:
            self._blob = super().blob()
        return self._blob

    def type(self) -> Literal["RSA", "DSA", "EC", "Ed25519"]:
        if self._type is None:
            self._type = super().type()
        return self._type

    def sshType(self) -> bytes:
        if self._ssh_type is None:  # asked after fromString has set `_sk`
            self._ssh_type = super().sshType()
        return self._ssh_type

    def verify(self, signature: bytes, data: bytes) -> bool:
        # Conch verifies Ed25519 with cryptography's OpenSSL build (1.46 M instructions a login);
        # libsodium does it in 0.68 M and refuses at least what OpenSSL refuses (keys/sodium.py).
        # Only an "ssh-ed25519" signature of 64 bytes in one string: Conch accepted any name.
        if self.type() != "Ed25519":
            return bool(super().verify(signature, data))
        reader = WireReader(signature)
        try:
            if reader.string() != b"ssh-ed25519":
                return False
            raw = reader.string()
        except SkError:
            return False
        if self._raw_public is None:
            self._raw_public = self.data()["a"]  # Conch's public name for its 32 bytes
        return sodium.ed25519_verify(self._raw_public, raw, data)


def ed25519_key_refusal(key: Key) -> str | None:
    """Why every signature of this Ed25519 key (plain or sk) is refused (`sodium.ed25519_public_refusal`:
    a key of small order, anyone can sign for it), or None; None for other types."""
    if key.type() != "Ed25519":
        return None
    return sodium.ed25519_public_refusal(key.data()["a"])  # Conch's public name for its 32 bytes


def public_key_from_blob(blob: bytes) -> PublicKey:
    """A public key from its SSH wire blob (a client's or a file's), read as sshd reads it (see
    `sshd_blob`); its `blob()` is the key as ssh-keygen writes it, what lines and revocations
    are matched on and fingerprints taken of. No format guessing: Conch sends text starting with
    '(' or '{' to SEXP/LSH parsers that assert."""
    canonical = sshd_blob(blob)
    try:
        key = PublicKey.fromString(canonical, type="blob")
    except _PARSER_ERRORS as e:
        raise KeyParseError(_reason(e)) from None
    key._blob = canonical
    return key


#: The curve name an ECDSA key blob must carry for its type, as sshd requires.
_EC_CURVE_NAMES = {
    b"ecdsa-sha2-nistp256": b"nistp256",
    b"ecdsa-sha2-nistp384": b"nistp384",
    b"ecdsa-sha2-nistp521": b"nistp521",
}
_MAX_EC_POINT = (528 * 2 // 8) + 1  # SSHBUF_MAX_ECPOINT
_ED25519_SIZE = 32


def _ns(value: bytes) -> bytes:
    return struct.pack(">L", len(value)) + value


def _mp(value: int) -> bytes:
    data = value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b""
    return _ns(data)


def sshd_blob(blob: bytes) -> bytes:
    """`blob` as ssh-keygen writes the key, or KeyParseError where OpenSSH's sshkey_from_blob
    refuses it. Conch's parser is looser than sshd's: it ignores bytes after the key, ignores
    an ECDSA key's curve name and takes compressed points, and reads a number with its top bit
    set as positive. sshd's leniencies are kept: numbers with leading zero bytes, and a NUL
    ending a name (sshbuf_get_cstring). Types other than these are left to Conch to refuse."""
    reader = WireReader(blob)
    try:
        key_type = reader.cstring()
    except SkError:
        raise KeyParseError("no key type in the blob") from None
    try:
        if key_type in SK_KEY_TYPES:
            canonical = _ns(key_type) + blob[reader.pos :]
            parse_sk_public_key(canonical)  # SkError's own reason, below
            return canonical
        fields = [_ns(key_type)]
        if key_type == b"ssh-rsa":
            fields += [_mp(reader.mpint()), _mp(reader.mpint())]
        elif key_type == b"ssh-dss":
            fields += [_mp(reader.mpint()) for _ in range(4)]
        elif key_type in _EC_CURVE_NAMES:
            curve = reader.cstring()
            if curve != _EC_CURVE_NAMES[key_type]:
                raise KeyParseError(f"curve name {_printable(curve)} does not match key type {_printable(key_type)}")
            point = reader.string()
            if not point or len(point) > _MAX_EC_POINT:
                raise KeyParseError("EC point empty or too long")
            if point[0] != 4:
                raise KeyParseError("EC point not in uncompressed form (sshd reads only uncompressed points)")
            fields += [_ns(curve), _ns(point)]
        elif key_type == b"ssh-ed25519":
            public = reader.string()
            if len(public) != _ED25519_SIZE:
                raise KeyParseError(f"Ed25519 key of {len(public)} bytes, not {_ED25519_SIZE}")
            fields.append(_ns(public))
        else:
            return blob
        if reader.remaining:
            raise KeyParseError("trailing data after the key")
    except SkError as e:
        raise KeyParseError(str(e) if key_type in SK_KEY_TYPES else f"{_printable(key_type)} key: {e}") from None
    return b"".join(fields)


def _printable(name: bytes, limit: int = 40) -> str:
    """A name from a blob, fit for a log line: printable ASCII, the rest escaped, cut at `limit`."""
    text = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in name[:limit])
    return text + ("..." if len(name) > limit else "")


#: Client keys ParsedKeys keeps by default (an operator's keys are offered again at each login).
PARSED_KEYS = 256
#: The longest blob ParsedKeys keeps: an RSA key of 16384 bits is 2,071 bytes. sshd (and so
#: conchcmd) takes numbers padded with leading zero bytes, so a client can pad the blobs it offers.
MAX_KEPT_BLOB = 4096


class ParsedKeys:
    """The keys of the latest client key blobs read (`public_key_from_blob`), the least recently
    offered dropped first: a blob always parses to the same key, so OpenSSH's probe and signed
    request, and each later login with that key, take the key read the first time. Blobs that do
    not parse are not kept (each raises KeyParseError again), nor blobs longer than MAX_KEPT_BLOB
    (no real key's: the cache holds at most size x MAX_KEPT_BLOB bytes of client data)."""

    def __init__(self, size: int = PARSED_KEYS):
        self.size = size
        self._keys: OrderedDict[bytes, PublicKey] = OrderedDict()

    def get(self, blob: bytes) -> PublicKey:
        key = self._keys.get(blob)
        if key is not None:
            self._keys.move_to_end(blob)
            return key
        key = public_key_from_blob(blob)
        if len(blob) > MAX_KEPT_BLOB:
            return key
        self._keys[blob] = key
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return key


def public_key_from_line(field: KeyField) -> PublicKey:
    """The public key a `TYPE BASE64` line names, read as sshd reads it: the blob's own type must be
    the one the line names, and sk keys (which Conch reads loosely) are read with sshd's rules."""
    key = public_key_from_blob(field.blob)
    if key.sshType().decode() != LINE_KEY_TYPES[field.key_type]:
        raise KeyTypeMismatch(f"key type {field.key_type} does not match the key")
    if key.sshType() in SK_KEY_TYPES:
        try:
            parse_sk_public_key(field.blob)
        except SkError as e:
            raise KeyParseError(str(e)) from None
    return key


def private_key_from_file(data: bytes, path: str, *, kind: type[Key] = Key) -> Key:
    """A private key from the contents of the key file at `path` (OpenSSH or PEM), as a `kind`
    (Key or a subclass). EncryptedKeyFile when it has a passphrase; KeyParseError when it cannot
    be read."""
    try:
        return kind.fromString(data)
    except EncryptedKeyError:
        raise EncryptedKeyFile(path) from None
    except _PARSER_ERRORS as e:
        raise KeyParseError(_reason(e)) from None


def _reason(e: Exception) -> str:
    text = str(e)
    return text if isinstance(e, BadKeyError | ValueError) and text else f"unreadable key ({type(e).__name__})"
