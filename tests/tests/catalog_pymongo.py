"""Runs the pymongo one-liners of docs/catalog.md against a catalogue Ferry wrote.

Usage: catalog_pymongo.py DOCS_MD HOST:PORT DB. Prints {question: answer} as JSON. The only
thing it knows about the catalogue is the documentation: it takes the first ```python block
and runs its connection line as written (user, authSource, the password from the variable
the docs name, which the caller sets), with only the server (`db.example` → HOST:PORT, a
direct connection) and the database (`run` → DB) changed, then evaluates each line after a
`# question` comment. Last, as the same read-only user, it tries to insert a document:
`"reader insert"` is `"refused (code N)"` or `"allowed"`.
"""
import json
import re
import sys

try:
    import pymongo
except ImportError:
    sys.exit("pymongo is not installed: run `pip install pymongo` (see deploy/install-test-deps.sh)")

md_path, server, db = sys.argv[1:4]
block = re.search(r"```python\n(.*?)```", open(md_path).read(), re.S).group(1)
lines = block.splitlines()
first_question = next(i for i, line in enumerate(lines) if line.startswith("# "))
setup = "\n".join(lines[:first_question])
connect = re.search(r'MongoClient\("(mongodb://[^"]*)"(.*?)\)\.run\.runs', setup)
if not connect:
    sys.exit("docs/catalog.md: the python block does not open MongoClient(\"mongodb://…\"…).run.runs")
uri = connect.group(1)
if "@db.example/run?" not in uri:
    sys.exit(f"docs/catalog.md: the URI {uri!r} is not of the form mongodb://USER@db.example/run?…")
uri = uri.replace("@db.example/run?", f"@{server}/{db}?") + "&directConnection=true"
setup = setup.replace(connect.group(0), f"MongoClient({uri!r}{connect.group(2)})[{db!r}].runs")
ns = {}
exec(setup, ns)
answers, question = {}, None
for line in lines[first_question:]:
    if line.startswith("# "):
        question = line[2:].strip()
    elif line.strip():
        answers[question] = eval(line, ns)
try:
    ns["runs"].insert_one({"number": 999999, "written_by": "a reader"})
    answers["reader insert"] = "allowed"
except pymongo.errors.OperationFailure as e:
    answers["reader insert"] = f"refused (code {e.code})"
print(json.dumps(answers, default=str))
