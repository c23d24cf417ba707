"""Post-training tests: the chat tokenizers come from tests/chat_fixtures.py."""
from tests.chat_fixtures import bpe_chat, char_chat  # noqa: F401  (pytest fixtures)
