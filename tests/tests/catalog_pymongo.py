"""Runs the pymongo one-liners of docs/catalog.md against a catalogue Ferry wrote.

Usage: catalog_pymongo.py DOCS_MD URI DB. Prints {question: answer} as JSON. The only thing
it knows about the catalogue is the documentation: it takes the first ```python block, points
its MongoClient at URI/DB, and evaluates each line after a `# question` comment.
"""
import json
import re
import sys

try:
    import pymongo  # noqa: F401
except ImportError:
    sys.exit("pymongo is not installed: run `pip install pymongo` (see deploy/install-test-deps.sh)")

md_path, uri, db = sys.argv[1:4]
block = re.search(r"```python\n(.*?)```", open(md_path).read(), re.S).group(1)
lines = block.splitlines()
first_question = next(i for i, line in enumerate(lines) if line.startswith("# "))
setup, n = re.subn(
    r'MongoClient\("[^"]*"\)\.run\.runs',
    f"MongoClient({uri!r})[{db!r}].runs",
    "\n".join(lines[:first_question]),
)
if n != 1:
    sys.exit("docs/catalog.md: the python block does not open MongoClient(...).run.runs")
ns = {}
exec(setup, ns)
answers, question = {}, None
for line in lines[first_question:]:
    if line.startswith("# "):
        question = line[2:].strip()
    elif line.strip():
        answers[question] = eval(line, ns)
print(json.dumps(answers, default=str))
