/**
 * Front-proxy mode behind a real nginx running the generated config with `--cache lua`
 * (decisions in a lua_shared_dict; src/front/nginx-lua.ts): the shared suite,
 * nginx-front-suite.ts, and what only that variant does (every method cached, the decision of
 * a failed backend dropped, the backend given exactly what the plain variant gives it).
 */
import { nginxFrontSuite, requireNginxLua } from './nginx-front-suite.ts';

requireNginxLua();
nginxFrontSuite('lua');
