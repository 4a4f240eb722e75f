/**
 * The health check's target from the environment; a file of its own with no imports, so
 * the health check starts in milliseconds (it runs every few seconds in a container).
 */
export function healthcheckUrl(flag: string | undefined): string {
  return flag ?? process.env.SMART_PROXY_HEALTHCHECK_URL ?? `http://127.0.0.1:${process.env.SMART_PROXY_PORT ?? '8080'}/`;
}
