"""ragcourse: the helper package of the course "Fine-tune open LLMs with LoRA/QLoRA for domain RAG".

Importing it does no work: every heavy library (torch, transformers, peft, llama-index, ragas) is
imported inside the function that needs it.
"""

__version__ = "0.1.0"
