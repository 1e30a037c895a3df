/* Text generation in C with a GPT decode step exported by graphc (gc.nn.Generator.export).
 *
 * The library's context holds the model's weights and its KV caches (the variables its
 * run function updates), so generating is a loop of single calls:
 *
 *     gpt_run(ctx, &token, &pos, &next)   token at position pos -> the token for pos + 1
 *
 * The prompt is fed one token per call (a decode step at pos attends to every earlier
 * position through the cache, so this equals a prefill); each later call feeds back the
 * token the previous one chose. Sampling (greedy, temperature, top-k) happens inside the
 * library, exactly as graphc's Generator does it in Python.
 *
 *     gpt_generate [-v VOCAB] N_NEW ID [ID ...]
 *
 * prints the N_NEW generated ids on one line; with -v VOCAB (a file whose i-th byte is the
 * character of id i) also the text on a second line. The decode time per token goes to
 * stderr. Uses only libc and the generated gpt.h / libgpt.so (see README.md).
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpt.h"

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int usage(const char *prog) {
    fprintf(stderr, "usage: %s [-v VOCAB] N_NEW ID [ID ...]\n", prog);
    return 2;
}

int main(int argc, char **argv) {
    const char *vocab_path = NULL;
    int arg = 1;
    if (arg + 1 < argc && strcmp(argv[arg], "-v") == 0) {
        vocab_path = argv[arg + 1];
        arg += 2;
    }
    if (argc - arg < 2) return usage(argv[0]);
    long n_new = strtol(argv[arg++], NULL, 10);
    int n_prompt = argc - arg;
    if (n_new < 1) return usage(argv[0]);
    if (GPT_INPUT0_ELEMENTS != 1) {
        fprintf(stderr, "this example drives a batch-1 generator\n");
        return 2;
    }

    char vocab[4096];
    size_t vocab_size = 0;
    if (vocab_path != NULL) {
        FILE *f = fopen(vocab_path, "rb");
        if (f == NULL) { perror(vocab_path); return 1; }
        vocab_size = fread(vocab, 1, sizeof vocab, f);
        fclose(f);
    }

    gpt_context *ctx;
    int rc = gpt_create(&ctx);
    if (rc != GPT_OK) { fprintf(stderr, "%s\n", gpt_error_string(rc)); return 1; }

    long total = n_prompt + n_new - 1;  /* the last new token is never fed back */
    int64_t *out = malloc((size_t)n_new * sizeof *out);
    if (out == NULL) return 1;
    int64_t token = 0, next = 0;
    double decode_us = 0.0;
    for (long i = 0; i < total; i++) {
        token = i < n_prompt ? (int64_t)strtoll(argv[arg + i], NULL, 10) : next;
        int64_t pos = i;
        double t0 = now_us();
        rc = gpt_run(ctx, &token, &pos, &next);
        if (i >= n_prompt) decode_us += now_us() - t0;  /* generated tokens only */
        if (rc != GPT_OK) {  /* e.g. a position past the cache: the library checks it */
            fprintf(stderr, "step %ld: %s\n", i, gpt_error_string(rc));
            if (rc == GPT_ERR_COMPUTE) fprintf(stderr, "%s\n", gpt_failure(ctx));
            return 1;
        }
        if (i >= n_prompt - 1) out[i - (n_prompt - 1)] = next;
    }
    for (long i = 0; i < n_new; i++) printf(i ? " %lld" : "%lld", (long long)out[i]);
    printf("\n");
    if (vocab_size > 0) {
        for (long i = 0; i < n_new; i++)
            putchar(out[i] >= 0 && (size_t)out[i] < vocab_size ? vocab[out[i]] : '?');
        printf("\n");
    }
    if (n_new > 1)
        fprintf(stderr, "decode: %.1f us/token over %ld tokens\n", decode_us / (double)(n_new - 1),
                n_new - 1);
    free(out);
    gpt_destroy(ctx);
    return 0;
}
