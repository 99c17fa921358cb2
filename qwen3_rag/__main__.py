"""``python -m qwen3_rag`` runs the CLI."""

import sys

from qwen3_rag.cli import main

sys.exit(main())
