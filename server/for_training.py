"""What `training/` may use of the server: the one place its imports come from (tests/test_for_training.py
pins the list).

Training reuses the server's own pieces rather than copies of them, so that what is trained is read, cut into
sentences, prompted, quantised and checked exactly as the server will: the error hierarchy (one-line CLI
errors and exit codes), the face model's label vocabulary, the sentence splitter, the prompt layout and
persona settings, GGUF quantising and the decode check, and the companion itself, run on evaluation prompts.
Its versioned data files are read by the server's one loader. Anything else in the server may change without
training noticing.
"""

from server.config import load_settings
from server.conversation.components import Components
from server.conversation.engine import Companion
from server.conversation.llm.chat import fold_system
from server.conversation.llm.check import Outcome, check_decode
from server.conversation.llm.llama import LlamaCppChat
from server.conversation.prompt import Prompts
from server.conversation.sentences import SentenceSplitter
from server.conversation.turns import TurnInput
from server.datafiles import DataFile, Invalid
from server.errors import ConfigError, ModelError, TadbotError, exit_code
from server.eval.safety import read_rows
from server.face.manifest import VOCABULARY, normalize_label
from server.models.quantize import QUANT_TYPES, llama_log, quantize
from server.records.store import Records
from server.sections import PersonaSection

__all__ = [
    "QUANT_TYPES",
    "VOCABULARY",
    "Companion",
    "Components",
    "ConfigError",
    "DataFile",
    "Invalid",
    "LlamaCppChat",
    "ModelError",
    "Outcome",
    "PersonaSection",
    "Prompts",
    "Records",
    "SentenceSplitter",
    "TadbotError",
    "TurnInput",
    "check_decode",
    "exit_code",
    "fold_system",
    "llama_log",
    "load_settings",
    "normalize_label",
    "quantize",
    "read_rows",
]
