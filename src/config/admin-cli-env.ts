/** What the operator CLI (`smart-proxy status|start|stop|logs|audit`) takes from the environment. */
export interface AdminCliEnv {
  /** SMART_PROXY_ADMIN_URL: the admin listener, e.g. http://127.0.0.1:9180. */
  readonly url: string | undefined;
  /** SMART_PROXY_ADMIN_TOKEN: a bearer token of an admin identity (kept out of argv and shell history). */
  readonly token: string | undefined;
}

export function adminCliEnv(): AdminCliEnv {
  const nonEmpty = (v: string | undefined): string | undefined => (v === undefined || v === '' ? undefined : v);
  return { url: nonEmpty(process.env.SMART_PROXY_ADMIN_URL), token: nonEmpty(process.env.SMART_PROXY_ADMIN_TOKEN) };
}
