"""Client-side encryption of files that match a target's encrypt patterns.

**Keys.** A target's master key is scrypt (N=2**15, r=8, p=1) of the passphrase with a
random 16-byte salt kept in the target's manifest, next to a *verifier* (HKDF of the key):
a wrong passphrase is recognised before anything is read or written. Each file gets its
own key, HKDF-SHA256 of the master key with a random 16-byte file salt.

**Objects** (``HSENC1``): a 32-byte header (magic, file salt, chunk size), then the file in
chunks of 1 MiB, each sealed with AES-256-GCM under the file key; the nonce is the chunk's
number and a last-chunk flag, and the associated data is the header plus the file's path
in the target. So a changed byte, a truncated or extended object, reordered chunks or an
object moved to another name all fail authentication: :class:`TamperedObject`, and the
caller writes nothing. Files stream through: memory stays at one chunk.

**Names.** The manifest records an encrypted file's content hash as HMAC-SHA256 of its
SHA-256 under a key derived from the master key (``name_hash``), not the plain SHA-256,
which would let anyone holding the bucket confirm a guess of the content.

**alces's ``<name>.dat``** (``tar -cz | openssl enc -e -aes256 -pass env:password``, MD5 key
derivation, no integrity) is read by :func:`decrypt_openssl_enc` so its files can be stored
again properly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

MAGIC = b"HSENC1\x00\x00"
HEADER = struct.Struct(">8s16sI4x")  # magic, file salt, chunk size, padding: 32 bytes
CHUNK = 1 << 20
TAG = 16
SCRYPT = {"n": 2**15, "r": 8, "p": 1}


class CryptoError(ValueError):
    """A passphrase or an encrypted object is wrong; the message says which."""


class WrongPassphrase(CryptoError):
    pass


class TamperedObject(CryptoError):
    pass


def _hkdf(key: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


class TargetKey:
    """A target's master key (from its passphrase and the manifest's KDF settings)."""

    def __init__(self, master: bytes, params: dict):
        self._master = master
        self.params = params
        self._name_key = _hkdf(master, b"hpcsync-cloudsync name-hash")

    def __repr__(self) -> str:
        return "TargetKey(***)"

    @classmethod
    def create(cls, passphrase: str) -> TargetKey:
        salt = os.urandom(16)
        master = _scrypt(passphrase, salt, SCRYPT)
        params = {"kdf": "scrypt", **SCRYPT, "salt": base64.b64encode(salt).decode()}
        params["verifier"] = base64.b64encode(_hkdf(master, b"hpcsync-cloudsync verifier")).decode()
        return cls(master, params)

    @classmethod
    def open(cls, passphrase: str, params: dict, where: str) -> TargetKey:
        """The key for ``params`` (from a manifest); :class:`WrongPassphrase` if it is not."""
        try:
            if params.get("kdf") != "scrypt":
                raise CryptoError(f"{where}: unknown key derivation {params.get('kdf')!r}")
            salt = base64.b64decode(params["salt"])
            verifier = base64.b64decode(params["verifier"])
            cost = {"n": int(params["n"]), "r": int(params["r"]), "p": int(params["p"])}
        except (KeyError, ValueError, TypeError):
            raise CryptoError(f"{where}: the encryption settings are damaged") from None
        if cost["n"] > 2**20 or cost["r"] > 32 or cost["p"] > 16:
            raise CryptoError(f"{where}: scrypt cost {cost} is beyond what hpcsync accepts")
        master = _scrypt(passphrase, salt, cost)
        if not hmac.compare_digest(_hkdf(master, b"hpcsync-cloudsync verifier"), verifier):
            raise WrongPassphrase(f"wrong passphrase: it does not open the key of {where}")
        return cls(master, dict(params))

    def name_hash(self, sha256: str) -> str:
        """What the manifest stores for an encrypted file with plain content ``sha256``."""
        return hmac.new(self._name_key, bytes.fromhex(sha256), hashlib.sha256).hexdigest()

    def _file_key(self, salt: bytes) -> bytes:
        return _hkdf(self._master, b"hpcsync-cloudsync file|" + salt)

    # -- files -----------------------------------------------------------------------------------

    def encrypt_file(self, src: BinaryIO, dst: BinaryIO, rel: str) -> int:
        """Encrypt ``src`` into ``dst`` for the path ``rel``; return the bytes written."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        salt = os.urandom(16)
        header = HEADER.pack(MAGIC, salt, CHUNK)
        aead = AESGCM(self._file_key(salt))
        aad = header + rel.encode("utf-8")
        dst.write(header)
        written = len(header)
        index = 0
        block = src.read(CHUNK)
        while True:
            nxt = src.read(CHUNK) if len(block) == CHUNK else b""
            last = not nxt
            sealed = aead.encrypt(_nonce(index, last), block, aad)
            dst.write(sealed)
            written += len(sealed)
            if last:
                return written
            block, index = nxt, index + 1

    def decrypt_chunks(self, src: BinaryIO, rel: str, where: str) -> Iterator[bytes]:
        """Plain chunks of the object in ``src`` stored for ``rel``; :class:`TamperedObject`
        (after which the caller must discard what it got) if any part fails."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        header = src.read(HEADER.size)
        if len(header) != HEADER.size:
            raise TamperedObject(f"{where} is not an hpcsync encrypted object (too short)")
        magic, salt, chunk = HEADER.unpack(header)
        if magic != MAGIC or not 0 < chunk <= 64 * CHUNK:
            raise TamperedObject(f"{where} is not an hpcsync encrypted object (bad header)")
        aead = AESGCM(self._file_key(salt))
        aad = header + rel.encode("utf-8")
        index = 0
        sealed = src.read(chunk + TAG)
        while True:
            nxt = src.read(chunk + TAG) if len(sealed) == chunk + TAG else b""
            last = not nxt
            try:
                yield aead.decrypt(_nonce(index, last), sealed, aad)
            except InvalidTag:
                raise TamperedObject(
                    f"{where} failed authentication (changed, truncated or moved); nothing was written"
                ) from None
            if last:
                return
            sealed, index = nxt, index + 1


def _nonce(index: int, last: bool) -> bytes:
    return struct.pack(">QB3x", index, 1 if last else 0)


def _scrypt(passphrase: str, salt: bytes, cost: dict) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=cost["n"], r=cost["r"], p=cost["p"]).derive(passphrase.encode("utf-8"))


# -- alces's openssl enc tarball ---------------------------------------------------------------


def _evp_bytes_to_key(password: bytes, salt: bytes, digest: str) -> tuple[bytes, bytes]:
    """OpenSSL's EVP_BytesToKey (one iteration): 32 key bytes and 16 IV bytes."""
    out, block = b"", b""
    while len(out) < 48:
        block = hashlib.new(digest, block + password + salt).digest()
        out += block
    return out[:32], out[32:48]


def decrypt_openssl_enc(data: bytes, passphrase: str, where: str) -> bytes:
    """Plaintext of ``openssl enc -e -aes256 -pass ...`` output (``Salted__`` + salt + CBC).

    OpenSSL before 1.1 derived the key with MD5 (alces's era), later with SHA-256; both are
    tried, and the result must be a gzip stream (alces wrote ``tar -cz``), since this format
    has no integrity check of its own. :class:`WrongPassphrase` otherwise."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if len(data) < 32 or not data.startswith(b"Salted__") or (len(data) - 16) % 16:
        raise CryptoError(f"{where} is not an 'openssl enc' file (no Salted__ header)")
    salt, body = data[8:16], data[16:]
    for digest in ("md5", "sha256"):
        key, iv = _evp_bytes_to_key(passphrase.encode("utf-8"), salt, digest)
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        padded = decryptor.update(body) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            plain = unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            continue
        if plain.startswith(b"\x1f\x8b"):
            return plain
    raise WrongPassphrase(f"wrong passphrase for {where}: it does not decrypt to alces's tar.gz")
