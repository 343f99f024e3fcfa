"""One module per `rwkv1c` verb.

Each verb is a function whose signature and docstring are its `--help` (see `rwkv1c.cli`). A verb
validates its arguments, calls the parts (`rwkv1c.model`, `data`, `train`, `infer`, `onec`,
`machine`) and prints what the user asked for; the work itself lives in the parts. Verbs never
import each other: what two of them share belongs to a part.
"""
