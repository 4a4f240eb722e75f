// @ts-check
/**
 * The health check's target from the environment; a file of its own with no imports, so
 * the health check starts in milliseconds (it runs every few seconds in a container).
 * @param {string | undefined} flag `--url`
 * @returns {string}
 */
export function healthcheckUrl(flag) {
  return flag ?? process.env.SMART_PROXY_HEALTHCHECK_URL ?? `http://127.0.0.1:${process.env.SMART_PROXY_PORT ?? '8080'}/`;
}
