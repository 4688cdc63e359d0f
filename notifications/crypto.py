"""Encryption of stored secrets with AES-256-GCM: the only module that imports `cryptography`.

A token reads `v1:<key id>:<base64url(nonce | ciphertext | tag)>`. The key id (a hash prefix of
the key, which reveals nothing of it) names the key that can open the token, so several keys can
be loaded at once while secrets are re-encrypted under a new one. The associated data binds each
token to the field it belongs to, so a ciphertext cannot be moved to another field.
"""

import base64
import binascii
import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

from .exceptions import EncryptionKeyError, SecretDecryptionError

logger = logging.getLogger(__name__)

VERSION = "v1"
NONCE_BYTES = 12
KEY_BYTES = 32  # AES-256


@dataclass(frozen=True)
class KeyRing:
    """The primary key encrypts; every key (primary first) may decrypt."""

    keys: dict[str, bytes]
    primary_id: str
    source: str

    def __repr__(self) -> str:
        return f"KeyRing(ids={list(self.keys)}, source={self.source!r})"


def generate_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"vertex-email key id:" + key).hexdigest()[:12]


def _decode_key(text: str, source: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise EncryptionKeyError(
            f"the encryption key in {source} is malformed: expected 32 bytes, base64-encoded "
            "(make one with `python manage.py rotate_encryption_key --print-new-key`)"
        )
    return key


def _key_texts(text: str) -> list[str]:
    """One key per line (or comma-separated), the primary first; '#' starts a comment line."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [part.strip() for line in lines for part in line.split(",") if part.strip()]


def parse_keys(text: str, source: str) -> KeyRing:
    keys = [_decode_key(key_text, source) for key_text in _key_texts(text)]
    if not keys:
        raise EncryptionKeyError(f"{source} holds no encryption key")
    ring = {key_id(key): key for key in keys}
    return KeyRing(keys=ring, primary_id=key_id(keys[0]), source=source)


def key_file_path() -> Path:
    return Path(settings.EMAIL_ENCRYPTION_KEY_FILE)


def load_keyring() -> KeyRing:
    """The keys from EMAIL_ENCRYPTION_KEY, else from the key file (created in development)."""
    if settings.EMAIL_ENCRYPTION_KEY:
        return parse_keys(settings.EMAIL_ENCRYPTION_KEY, "EMAIL_ENCRYPTION_KEY")
    path = key_file_path()
    if not path.exists() and not settings.IS_PRODUCTION:
        write_key_file(path, [generate_key()])
        logger.warning(
            "created a new encryption key file %s (mode 0600). Back it up: without it the stored "
            "SMTP password cannot be read.",
            path,
        )
    try:
        text = path.read_text()
    except OSError as exc:
        raise EncryptionKeyError(
            f"cannot read the encryption key file {path}: {exc.strerror}. Set "
            "EMAIL_ENCRYPTION_KEY or EMAIL_ENCRYPTION_KEY_FILE to a readable key."
        ) from None
    return parse_keys(text, f"key file {path}")


def write_key_file(path: Path, keys: list[str]) -> None:
    """Write keys (primary first) to `path` with mode 0600, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("# vertex_email encryption keys: the first encrypts, all decrypt.\n")
        handle.write("\n".join(keys) + "\n")
    os.replace(temporary, path)


def prepend_key_to_file(key_text: str) -> None:
    """Make `key_text` the primary key of the key file, keeping the others for decryption."""
    path = key_file_path()
    write_key_file(path, [key_text, *_key_texts(path.read_text())])


def keep_only_primary_key_in_file() -> None:
    path = key_file_path()
    write_key_file(path, _key_texts(path.read_text())[:1])


def encrypt(plaintext: str, *, context: str, ring: KeyRing | None = None) -> str:
    ring = ring or load_keyring()
    nonce = secrets.token_bytes(NONCE_BYTES)  # random 96-bit nonce: never reused with a key
    sealed = AESGCM(ring.keys[ring.primary_id]).encrypt(nonce, plaintext.encode(), context.encode())
    payload = base64.urlsafe_b64encode(nonce + sealed).decode()
    return f"{VERSION}:{ring.primary_id}:{payload}"


def token_key_id(token: str) -> str:
    version, _, rest = token.partition(":")
    if version != VERSION or ":" not in rest:
        raise SecretDecryptionError("the stored secret is not in a format this version can read")
    return rest.partition(":")[0]


def decrypt(token: str, *, context: str, ring: KeyRing | None = None) -> str:
    """Open a token; SecretDecryptionError (with no secret in its text) if it cannot be opened."""
    ring = ring or load_keyring()
    wanted = token_key_id(token)
    key = ring.keys.get(wanted)
    if key is None:
        raise SecretDecryptionError(
            f"the stored {context} was encrypted with key {wanted}, which is not among the "
            f"loaded keys {sorted(ring.keys)} ({ring.source}). Restore that key or set the secret "
            "again."
        )
    try:
        raw = base64.urlsafe_b64decode(token.rsplit(":", 1)[1].encode())
        return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()).decode()
    except (InvalidTag, binascii.Error, ValueError):
        raise SecretDecryptionError(
            f"the stored {context} could not be decrypted with key {wanted}: the key is wrong or "
            "the stored value was altered. Set the secret again."
        ) from None
