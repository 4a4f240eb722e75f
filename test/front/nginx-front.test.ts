/**
 * Front-proxy mode behind a real nginx running the generated config with its default decision
 * cache (proxy_cache, asked by auth_request): the shared suite, nginx-front-suite.ts.
 */
import { nginxFrontSuite } from './nginx-front-suite.ts';

nginxFrontSuite('proxy');
