// Validates prometheus-operator objects against the CRDs' OpenAPI schemas, as compiled by
// @kubernetes-models/prometheus-operator. Reads a JSON list of objects from the file named by
// argv[2]; prints a JSON list with, per object, its kind, its name and the schema's error (null
// when valid). An apiVersion/kind the package has no model for is an error too.
import { readFileSync } from "node:fs";

const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = [];
for (const object of objects) {
  const [group, version] = object.apiVersion.split("/");
  const result = { kind: object.kind, name: object.metadata?.name ?? null, error: null };
  try {
    const module = await import(
      `@kubernetes-models/prometheus-operator/${group}/${version}/${object.kind}`
    );
    new module[object.kind](object).validate();
  } catch (error) {
    result.error = String(error.message ?? error);
  }
  results.push(result);
}
console.log(JSON.stringify(results));
