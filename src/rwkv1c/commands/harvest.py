"""`rwkv1c harvest`: turn a 1C configuration source tree into JSONL training data (`rwkv1c.onec.harvest`)."""

from __future__ import annotations

from pathlib import Path

from rwkv1c.errors import UserError, raise_all
from rwkv1c.onec.harvest import HarvestSettings, discover, harvest_tree, write_outputs


def harvest(
    src_dir: Path,
    *,
    output: Path,
    validation_output: Path | None = None,
    validation_fraction: float = 0.05,
    seed: int = 1234,
    max_tokens: int = 4096,
    strip_license_header: bool = True,
    dedup: bool = True,
    near_duplicate_threshold: float = 0.85,
    instructions: bool = True,
    completions: bool = True,
) -> int:
    """Build JSONL training data from a 1C configuration dump (Designer or EDT layout).

    Writes OUTPUT (and VALIDATION_OUTPUT when given, split by module), plus a summary
    (<output>.summary.json) and a dataset card (<output>.card.md) next to OUTPUT.

    Args:
        src_dir: Folder with the configuration sources: a Designer dump (DumpConfigToFiles), an EDT project,
            or a dumped external data processor / report.
        output: The JSONL file for training rows.
        validation_output: The JSONL file for validation rows; without it every module goes to OUTPUT.
        validation_fraction: Share of modules held out for validation.
        seed: Seed of the train/validation split.
        max_tokens: Token budget of one text row; longer modules are cut at region and method boundaries.
        strip_license_header: Remove a licence comment block that opens many modules (its year may differ).
        dedup: Drop exact and near-duplicate modules, and duplicate rows.
        near_duplicate_threshold: Word 5-gram Jaccard similarity from which two modules count as duplicates.
        instructions: Build doc2code rows from methods with a standard doc comment.
        completions: Build complete-the-method rows.
    """
    problems = []
    if src_dir.is_file():
        problems.append(f"{src_dir} is a file; pass the folder of a Designer dump or an EDT project")
    elif not src_dir.is_dir():
        problems.append(f"source folder not found: {src_dir}")
    if output.suffix.lower() != ".jsonl":
        problems.append(f"--output must end in .jsonl, got {output}")
    if validation_output is not None:
        if validation_output.suffix.lower() != ".jsonl":
            problems.append(f"--validation-output must end in .jsonl, got {validation_output}")
        if validation_output.resolve() == output.resolve():
            problems.append("--validation-output must differ from --output")
    raise_all(problems, "cannot harvest")
    if not discover(src_dir):
        raise UserError(
            f"no .bsl modules under {src_dir}",
            hint="point at a Designer dump (Configuration -> Dump config to files) or an EDT project folder",
        )
    settings = HarvestSettings(
        validation_fraction=validation_fraction,
        seed=seed,
        max_tokens=max_tokens,
        strip_license_header=strip_license_header,
        dedup=dedup,
        near_duplicate_threshold=near_duplicate_threshold,
        instructions=instructions,
        completions=completions,
    )
    result = harvest_tree(src_dir, settings, split=validation_output is not None, progress=True)
    write_outputs(result, output, validation_output)
    s = result.summary
    print(
        f"modules {s['modules_kept']}/{s['modules_read']} kept, methods {s['methods']}, "
        f"train {s['train']['rows']} rows / {s['train']['tokens']} tokens, "
        f"validation {s['validation']['rows']} rows / {s['validation']['tokens']} tokens, "
        f"licence header removed from {s['license_headers_removed']['modules']}, "
        f"control characters removed from {s['control_characters_removed']['modules']}, "
        f"skipped {len(s['skipped'])}"
    )
    return 0
