"""`python -m tasks.pretrain --config run.json` (what `accelerate launch` starts on every process)."""
import sys

from tasks.pretrain.stage import main

if __name__ == "__main__":
    sys.exit(main())
