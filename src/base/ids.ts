import { errors } from './errors.js';

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** Sandbox, container and exec ids become path components: only a safe alphabet passes. */
export function checkId(id: string, what: string): string {
  if (!ID_RE.test(id) || id.includes('..')) {
    throw errors.invalid('KATA_BAD_ID', `invalid ${what} ${JSON.stringify(id)}: expected [A-Za-z0-9][A-Za-z0-9_.-]{0,127}`);
  }
  return id;
}
