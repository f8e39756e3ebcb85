"""`torchrun --nproc-per-node N -m cramlm.train DATA_DIR [options]`: `cramlm train` in every process of a job.

Each process reads torchrun's environment and joins the job (see `train/distributed.py`); the options are those
of `cramlm train`.
"""

import sys

from cramlm.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
