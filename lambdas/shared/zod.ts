/**
 * zod, configured once. zod/mini holds the same checks in a fraction of every Lambda bundle (the
 * classic API cannot be tree-shaken; import it as `* as z` and never pass `z` around, or the
 * bundler keeps all of it). English messages are loaded here, as the classic API does.
 */
import { config } from 'zod/mini';
import en from 'zod/v4/locales/en.js';

config(en());
