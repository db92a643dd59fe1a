"""Files in, arrays out: volume I/O with validation and atomic writes, and case layouts (BraTS, MSD, phantom)."""
