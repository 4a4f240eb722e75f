/**
 * Which group and user names exist. Here, on the config's side, so that the schema checks
 * them without importing the access layer (which imports the schema's types).
 */

/**
 * Group names follow the grammar of the URL's `{required_groups}` segment (src/proxy/route.ts),
 * so that any group an identity holds can be named in a URL. A test keeps the two in step.
 */
export const GROUP_NAME_RE = /^[A-Za-z0-9._~@+:=-]{1,128}$/;

/** A user name is any text of 1-256 characters without control characters. */
export function isValidUserName(name: string): boolean {
  // eslint-disable-next-line no-control-regex
  return name.length > 0 && name.length <= 256 && !/[\u0000-\u001f\u007f]/.test(name);
}
