"""Files in, arrays out: volume I/O with validation and atomic writes, case layouts (BraTS, MSD, phantom), cohort splits and slice sets."""
