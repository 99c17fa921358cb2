"""``python -m qwen3_rag.cli`` runs the CLI, as ``python -m qwen3_rag`` and ``qwen3-rag`` do.

The module form launchers take (``torchrun -m qwen3_rag.cli finetune ...``).
"""

import sys

from qwen3_rag.cli import main

sys.exit(main())
