"""Checks the API's OpenAPI document and real answers against it.

usage: openapi_check.py DOC.json [PATH=ANSWER.json ...]

The document must be valid OpenAPI (openapi-spec-validator); each ANSWER, the body a GET of
PATH returned, must match the schema the document gives for that operation's 200 JSON answer.
Prints one line per problem and exits 1 when there is any.
"""
import json
import sys

import jsonschema
from openapi_spec_validator import validate


def main(argv):
    doc = json.load(open(argv[1]))
    validate(doc)
    problems = []
    for arg in argv[2:]:
        path, answer_file = arg.split("=", 1)
        answer = json.load(open(answer_file))
        op = doc["paths"][path]["get"]
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        # $refs point into the document's components: validate against the whole document.
        root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "components": doc["components"], **schema}
        validator = jsonschema.Draft202012Validator(root)
        for e in validator.iter_errors(answer):
            where = "/".join(str(p) for p in e.absolute_path)
            problems.append(f"GET {path}: answer at /{where}: {e.message[:300]}")
    for p in problems:
        print(p)
    print(f"openapi: document valid; {len(argv) - 2} answers checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
