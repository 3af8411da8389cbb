"""The test sets the paper uses where a user supplies them, and one line where ours are smaller:
ScoreFlow samples 1,000 DROP and 1,000 HotpotQA questions, split 1:4 (200 / 800)."""

import json
import shutil

from scoreflow.tasks import load_task
from scoreflow.tasks.data import packaged_data_dir
from scoreflow.tasks.registry import smaller_than_the_paper


def test_the_packaged_drop_and_hotpotqa_splits_say_they_are_smaller():
    drop, hotpot = load_task("drop", "test"), load_task("hotpotqa", "test")
    assert len(drop.questions) == 400 and len(hotpot.questions) == 105  # a held-out half of 200 rows
    assert smaller_than_the_paper(drop, "test").startswith("drop/test has 400 questions, the paper's has 800: put")
    assert "hotpotqa_test.jsonl in DIR/aflow/ and pass --data-dir DIR" in smaller_than_the_paper(hotpot, "test")
    assert smaller_than_the_paper(load_task("drop", "validate"), "validate") is None  # 200, as the paper's
    assert smaller_than_the_paper(load_task("gsm8k", "test"), "test") is None  # AFlow's split, as the paper's


def test_a_supplied_hotpotqa_test_file_is_the_test_split(tmp_path):
    shutil.copytree(packaged_data_dir() / "aflow", tmp_path / "aflow")
    rows = [json.loads(line) for line in (tmp_path / "aflow" / "hotpotqa_validate.jsonl").read_text().splitlines()]
    test_rows = [{**r, "_id": f"{r['_id']}-t{i}"} for i in range(4) for r in rows]  # 800 rows
    (tmp_path / "aflow" / "hotpotqa_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    test, validate = load_task("hotpotqa", "test", tmp_path), load_task("hotpotqa", "validate", tmp_path)
    assert len(test.questions) == 800 and len(validate.questions) == 200  # the two files, not halves
    assert smaller_than_the_paper(test, "test") is None and smaller_than_the_paper(validate, "validate") is None
