"""The 1C part: the BSL language, 1C configuration trees as training data, and evaluation on 1C code.

- `bsl.py`       a BSL lexer, method / region splitting and a structural checker
- `harvest.py`   a Designer dump or EDT project -> JSONL rows (text, doc2code, complete), split by module
- `evaluate.py`  models side by side on held-out 1C: bits per byte and scored generations
"""
