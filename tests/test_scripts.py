"""Every Python script in scripts/ imports and answers --help: a script that no other test runs still fails here when
a name it imports from the bundle moves or goes (scripts/benchmark_inference.py's U-Net baseline broke for three
releases unnoticed, session q)."""

import contextlib
import importlib.util
import io
import sys
import unittest
from pathlib import Path
from unittest import mock

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


class TestScriptsAnswerHelp(unittest.TestCase):
    def test_every_script_imports_and_prints_its_usage(self):
        scripts = sorted(SCRIPTS.glob("*.py"))
        self.assertGreater(len(scripts), 20)
        for path in scripts:
            with self.subTest(script=path.name):
                spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
                module = importlib.util.module_from_spec(spec)
                with mock.patch.object(sys, "path", [str(SCRIPTS)] + sys.path):  # as `python scripts/x.py` runs it
                    spec.loader.exec_module(module)  # not "__main__": defines, runs nothing
                out = io.StringIO()
                with mock.patch.object(sys, "argv", [path.name, "--help"]), contextlib.redirect_stdout(out), \
                        self.assertRaises(SystemExit) as done:
                    module.main()
                self.assertEqual(done.exception.code, 0)
                self.assertIn("usage:", out.getvalue())
