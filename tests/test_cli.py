import json
import subprocess
import sys

import numpy as np
from PIL import Image

from hfpipes.cli import main


def test_run_prints_json_lines(tiny_text_classifier, capsys):
    assert main(["-q", "run", "sentiment", "I love it", "awful", "--model", tiny_text_classifier, "--option", "top_k=2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        result = json.loads(line)
        assert len(result) == 2 and {r["label"] for r in result} == {"negative", "positive"}


def test_run_input_file_to_output_file(tiny_text_classifier, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps({"text": f"review {i}", "id": i}) for i in range(5)) + "\n")
    out = tmp_path / "out.jsonl"
    code = main(["-q", "run", "sentiment", "-i", str(source), "--field", "text", "-o", str(out), "-m", tiny_text_classifier])
    assert code == 0
    assert len(out.read_text().splitlines()) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_run_images_from_paths(tiny_image_classifier, tmp_path, capsys):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)
    assert main(["-q", "run", "image-classification", str(path), "-m", tiny_image_classifier, "-O", "top_k=1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] in {"cat", "dog", "bird"}


def test_errors_are_one_line_and_exit_2(tmp_path, tiny_image_classifier, capsys):
    assert main(["run", "sentimnet", "x"]) == 2
    assert "Did you mean 'sentiment'" in capsys.readouterr().err
    assert main(["run", "image-classification", str(tmp_path / "missing.jpg"), "-m", tiny_image_classifier]) == 2
    err = capsys.readouterr().err
    assert "error: input 0: image file not found" in err and "Traceback" not in err


def test_tasks_lists_aliases(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "sentiment" in out and "text-classification" in out and "recommended" in out


def test_help_does_not_import_torch():
    proc = subprocess.run([sys.executable, "-m", "hfpipes", "--help"], capture_output=True, text=True, check=True)
    assert "run" in proc.stdout and "tasks" in proc.stdout
    code = "import sys; from hfpipes.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
