"""AES-256-GCM tokens, key ids, key files, and errors that name no secret."""

import stat

import pytest

from notifications import crypto
from notifications.exceptions import EncryptionKeyError, SecretDecryptionError

CONTEXT = "notificationsettings.smtp_password"


@pytest.fixture
def key_file(settings, tmp_path):
    settings.EMAIL_ENCRYPTION_KEY = ""
    settings.EMAIL_ENCRYPTION_KEY_FILE = tmp_path / "keys" / "encryption.key"
    return settings.EMAIL_ENCRYPTION_KEY_FILE


def test_round_trip_and_format(key_file):
    token = crypto.encrypt("hunter2", context=CONTEXT)
    version, key_id, _payload = token.split(":")
    assert (version, key_id) == ("v1", crypto.load_keyring().primary_id)
    assert "hunter2" not in token
    assert crypto.decrypt(token, context=CONTEXT) == "hunter2"
    assert crypto.encrypt("hunter2", context=CONTEXT) != token  # a fresh nonce every time


def test_development_creates_a_missing_key_file_with_mode_0600(key_file, caplog):
    crypto.load_keyring()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "created a new encryption key file" in caplog.text


def test_production_refuses_a_missing_key_file(key_file, settings):
    settings.IS_PRODUCTION = True
    with pytest.raises(EncryptionKeyError, match="cannot read the encryption key file"):
        crypto.load_keyring()
    assert not key_file.exists()


def test_malformed_key_is_a_clear_error(settings):
    settings.EMAIL_ENCRYPTION_KEY = "not-a-key"
    with pytest.raises(EncryptionKeyError, match="malformed: expected 32 bytes"):
        crypto.load_keyring()


def test_a_token_moved_to_another_field_does_not_open(key_file):
    token = crypto.encrypt("hunter2", context=CONTEXT)
    with pytest.raises(SecretDecryptionError, match="could not be decrypted"):
        crypto.decrypt(token, context="notificationsettings.telegram_bot_token")


def test_wrong_key_names_the_missing_key_id_and_never_the_secret(settings):
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()
    token = crypto.encrypt("hunter2", context=CONTEXT)
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()
    with pytest.raises(SecretDecryptionError) as error:
        crypto.decrypt(token, context=CONTEXT)
    assert crypto.token_key_id(token) in str(error.value)
    assert "hunter2" not in str(error.value) and "Restore that key" in str(error.value)


def test_a_tampered_token_is_refused(settings):
    settings.EMAIL_ENCRYPTION_KEY = crypto.generate_key()
    token = crypto.encrypt("hunter2", context=CONTEXT)
    tampered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(SecretDecryptionError, match="altered"):
        crypto.decrypt(tampered, context=CONTEXT)


def test_several_keys_decrypt_and_the_first_encrypts(settings):
    old, new = crypto.generate_key(), crypto.generate_key()
    settings.EMAIL_ENCRYPTION_KEY = old
    token = crypto.encrypt("hunter2", context=CONTEXT)
    settings.EMAIL_ENCRYPTION_KEY = f"{new},{old}"
    assert crypto.decrypt(token, context=CONTEXT) == "hunter2"
    assert (
        crypto.token_key_id(crypto.encrypt("x", context=CONTEXT))
        == crypto.parse_keys(new, "test").primary_id
    )
