"""ragcourse: the helper package of the course "Fine-tune open LLMs with LoRA/QLoRA for domain RAG".

Importing it does no work: every heavy library (torch, transformers, peft, llama-index, ragas) is
imported inside the function that needs it. It sets one environment variable: how long OpenMP's idle threads spin
(``GOMP_SPINCOUNT``), which torch's thread pool reads when torch loads (``hardware.DEFAULT_GOMP_SPINCOUNT`` says why).
"""

from .hardware import apply_wait_policy as _apply_wait_policy

_apply_wait_policy()

__version__ = "0.1.0"
