/* A C program that runs a model exported by graphc (gc.export / `graphc compile`).
 *
 * It uses only the generated header and libNAME.so: no Python, no LLVM, no graphc.
 *
 *     client INPUT.npy|INPUT.bin
 *
 * reads the model's (single) input from a .npy file (dtype and size checked against the
 * header) or a raw little-endian .bin file of exactly the input's size, runs the model and
 * prints the (single) output, one row of its last dimension per line:
 *
 *     <argmax of the row>\t<value> <value> ...
 *
 * Values are printed with enough digits (%.9g for float32) to read back bit-exactly.
 *
 * Build for the model `mlp` (see build.sh; -DMODEL=cnn -DMODEL_UP=CNN for a library
 * named cnn):
 *     cc -O2 -std=c99 -Wall -Wextra -DMODEL=mlp -DMODEL_UP=MLP -I build \
 *        -o build/mlp_client main.c \
 *        -L build -lmlp -Wl,-rpath,"$PWD/build"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MODEL
#define MODEL mlp
#endif
/* The header's functions are MODEL_xxx, its macros MODEL_UP_XXX (upper case, which the
 * preprocessor cannot derive: pass both, -DMODEL=cnn -DMODEL_UP=CNN). */
#ifndef MODEL_UP
#define MODEL_UP MLP
#endif
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(x) CAT(MODEL, x)
#define UP(x) CAT(MODEL_UP, x)
#define STR_(x) #x
#define STR(x) STR_(x)
#include STR(MODEL.h)

#if UP(NUM_INPUTS) != 1 || UP(NUM_OUTPUTS) != 1
#error "this client runs models with exactly one input and one output"
#endif

typedef UP(INPUT0_CTYPE) input_t;
typedef UP(OUTPUT0_CTYPE) output_t;

/* Read the whole file; return its bytes (malloc'ed) and size, or NULL. */
static unsigned char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    size_t cap = 1 << 16, n = 0;
    unsigned char *data = malloc(cap);
    size_t got;
    while (data != NULL && (got = fread(data + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            unsigned char *bigger = realloc(data, cap *= 2);
            if (bigger == NULL) free(data);
            data = bigger;
        }
    }
    fclose(f);
    *size = n;
    return data;
}

/* The payload of a .npy file (format 1.0, 2.0 or 3.0) after checking its dtype and order;
 * or the whole file if it is not .npy. NULL with a message on a mismatch. */
static const unsigned char *payload(const unsigned char *data, size_t size, size_t *n) {
    if (size < 10 || memcmp(data, "\x93NUMPY", 6) != 0) {
        *n = size;
        return data;
    }
    size_t header_len = data[8] | (size_t)data[9] << 8, start = 10;
    if (data[6] >= 2) {
        if (size < 12) return NULL;
        header_len = data[8] | (size_t)data[9] << 8 | (size_t)data[10] << 16 |
                     (size_t)data[11] << 24;
        start = 12;
    }
    if (start + header_len > size) return NULL;
    char *header = malloc(header_len + 1);
    if (header == NULL) return NULL;
    memcpy(header, data + start, header_len);
    header[header_len] = '\0';
    int ok = strstr(header, UP(INPUT0_NPY_DESCR)) != NULL &&
             strstr(header, "'fortran_order': False") != NULL;
    if (!ok) fprintf(stderr, "input .npy header %s does not match dtype %s (C order)\n",
                     header, UP(INPUT0_NPY_DESCR));
    free(header);
    *n = size - start - header_len;
    return ok ? data + start + header_len : NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s INPUT.npy|INPUT.bin  (input %s: %s, %u bytes)\n", argv[0],
                UP(INPUT0_NAME), UP(INPUT0_DTYPE), (unsigned)UP(INPUT0_BYTES));
        return 2;
    }
    size_t size = 0, n = 0;
    unsigned char *file = read_file(argv[1], &size);
    if (file == NULL) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 1;
    }
    const unsigned char *data = payload(file, size, &n);
    if (data == NULL || n != UP(INPUT0_BYTES)) {
        fprintf(stderr, "%s: expected %u bytes of %s for input %s, got %zu\n", argv[1],
                (unsigned)UP(INPUT0_BYTES), UP(INPUT0_DTYPE), UP(INPUT0_NAME), n);
        free(file);
        return 1;
    }
    /* A copy keeps the input aligned for its element type (the file buffer is not). */
    input_t *input = malloc(UP(INPUT0_BYTES));
    output_t *output = malloc(UP(OUTPUT0_BYTES));
    if (input == NULL || output == NULL) return 1;
    memcpy(input, data, UP(INPUT0_BYTES));
    free(file);

    NAME(context) *ctx = NULL;
    int rc = NAME(create)(&ctx);
    if (rc == UP(OK)) rc = NAME(run)(ctx, input, output);
    if (rc != UP(OK)) {
        fprintf(stderr, "%s failed: %s\n", STR(MODEL), NAME(error_string)(rc));
        NAME(destroy)(ctx);
        return 1;
    }

#if UP(OUTPUT0_RANK) > 0
    static const size_t shape[] = UP(OUTPUT0_SHAPE);
    const size_t row = shape[UP(OUTPUT0_RANK) - 1];
#else
    const size_t row = 1;
#endif
    const char *format = sizeof(output_t) == 8 ? "%.17g" : "%.9g";
    for (size_t start = 0; row > 0 && start < UP(OUTPUT0_ELEMENTS); start += row) {
        size_t best = 0;
        for (size_t j = 1; j < row; j++)
            if (output[start + j] > output[start + best]) best = j;
        printf("%zu\t", best);
        for (size_t j = 0; j < row; j++) {
            printf(format, (double)output[start + j]);
            putchar(j + 1 < row ? ' ' : '\n');
        }
    }
    NAME(destroy)(ctx);
    free(input);
    free(output);
    return 0;
}
