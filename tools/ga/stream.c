/* SPDX-License-Identifier: BSD-3-Clause */
/* Splitting the agent's input stream into JSON messages the way QEMU's QMP
 * reader does, so that a serial line with garbage on it resynchronises the
 * same way:
 *
 * - A lexer turns bytes into tokens (structural characters, double- or
 *   single-quoted strings, numbers, [a-z]+ keywords, white space).  A byte
 *   that cannot continue or start a token is a lexical error: the bytes of
 *   the token so far become "JSON parse error, stray '...'", and the lexer
 *   then skips input until a byte that is a good place to start again (a
 *   bracket or brace, a control character other than TAB, or the bytes
 *   0xFE/0xFF that never occur in UTF-8, which is why a client sends 0xFF
 *   before guest-sync-delimited).
 * - A streamer collects tokens and counts brackets and braces; when the
 *   counts return to zero (or go negative) the collected tokens are one
 *   message, handed to the JSON parser.  Size, count and nesting limits
 *   turn into errors and drop what was collected.
 *
 * The collected tokens are kept as text (one space between tokens) and
 * parsed by the project's JSON parser, which gives QEMU's parse errors. */
#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"
#include "stream.h"

#define MAX_TOKEN_SIZE (64u << 20)
#define MAX_TOKEN_COUNT (2u << 20)
#define MAX_NESTING 1024

enum lex_state {
    L_START, L_DQ, L_DQ_ESC, L_SQ, L_SQ_ESC, L_ZERO, L_DIGITS, L_DIGIT, L_EXP_E,
    L_MANTISSA, L_MANTISSA_DIGITS, L_NONZERO, L_NEG, L_KEYWORD, L_WS, L_RECOVERY,
};

enum tok { T_NONE, T_LCURLY, T_RCURLY, T_LSQUARE, T_RSQUARE, T_OTHER, T_SKIP, T_ERROR };

/* What a byte does in a state: go to next state (consumed), end the token
 * before it (lookahead: token ends, byte re-read from L_START), end the
 * token with it (consumed), or fail. */
enum act { A_NEXT, A_END_BEFORE, A_END_WITH, A_FAIL };

struct step {
    enum act act;
    enum lex_state next;
};

static bool is_digit(unsigned c) { return c >= '0' && c <= '9'; }
static bool is_ws(unsigned c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Inside a string: printable bytes up to 0xFD. */
static struct step in_string(unsigned c, enum lex_state self, enum lex_state esc, char quote)
{
    if (c < 0x20 || c > 0xFD)
        return (struct step){ A_FAIL, L_START };
    if (c == (unsigned)quote)
        return (struct step){ A_END_WITH, L_START };
    if (c == '\\')
        return (struct step){ A_NEXT, esc };
    return (struct step){ A_NEXT, self };
}

/* After an escape: any printable byte (the parser judges it). */
static struct step in_escape(unsigned c, enum lex_state str)
{
    if (c < 0x20 || c > 0xFD)
        return (struct step){ A_FAIL, L_START };
    return (struct step){ A_NEXT, str };
}

/* The first byte of a token. */
static struct step start(unsigned c)
{
    if (c == '"') return (struct step){ A_NEXT, L_DQ };
    if (c == '\'') return (struct step){ A_NEXT, L_SQ };
    if (c == '0') return (struct step){ A_NEXT, L_ZERO };
    if (c >= '1' && c <= '9') return (struct step){ A_NEXT, L_NONZERO };
    if (c == '-') return (struct step){ A_NEXT, L_NEG };
    if (c >= 'a' && c <= 'z') return (struct step){ A_NEXT, L_KEYWORD };
    if (is_ws(c)) return (struct step){ A_NEXT, L_WS };
    if (strchr("{}[],:", (int)c) && c)
        return (struct step){ A_END_WITH, L_START };
    return (struct step){ A_FAIL, L_START };
}

/* Numbers: the RFC 8259 grammar, one state per position. */
static struct step number(enum lex_state s, unsigned c)
{
    const struct step end = { A_END_BEFORE, L_START }, fail = { A_FAIL, L_START };

    switch (s) {
    case L_ZERO:
        if (is_digit(c)) return fail;
        if (c == '.') return (struct step){ A_NEXT, L_MANTISSA };
        return end;
    case L_NONZERO:
        if (is_digit(c)) return (struct step){ A_NEXT, L_NONZERO };
        if (c == 'e' || c == 'E') return (struct step){ A_NEXT, L_EXP_E };
        if (c == '.') return (struct step){ A_NEXT, L_MANTISSA };
        return end;
    case L_NEG:
        if (c == '0') return (struct step){ A_NEXT, L_ZERO };
        if (c >= '1' && c <= '9') return (struct step){ A_NEXT, L_NONZERO };
        return fail;
    case L_MANTISSA:
        return is_digit(c) ? (struct step){ A_NEXT, L_MANTISSA_DIGITS } : fail;
    case L_MANTISSA_DIGITS:
        if (is_digit(c)) return (struct step){ A_NEXT, L_MANTISSA_DIGITS };
        if (c == 'e' || c == 'E') return (struct step){ A_NEXT, L_EXP_E };
        return end;
    case L_EXP_E:
        if (c == '-' || c == '+') return (struct step){ A_NEXT, L_DIGIT };
        return is_digit(c) ? (struct step){ A_NEXT, L_DIGITS } : fail;
    case L_DIGIT:
        return is_digit(c) ? (struct step){ A_NEXT, L_DIGITS } : fail;
    default: /* L_DIGITS */
        return is_digit(c) ? (struct step){ A_NEXT, L_DIGITS } : end;
    }
}

/* The transition for byte c in state s. */
static struct step transition(enum lex_state s, unsigned c)
{
    switch (s) {
    case L_START: return start(c);
    case L_DQ: return in_string(c, L_DQ, L_DQ_ESC, '"');
    case L_SQ: return in_string(c, L_SQ, L_SQ_ESC, '\'');
    case L_DQ_ESC: return in_escape(c, L_DQ);
    case L_SQ_ESC: return in_escape(c, L_SQ);
    case L_KEYWORD:
        return (c >= 'a' && c <= 'z') ? (struct step){ A_NEXT, L_KEYWORD }
                                      : (struct step){ A_END_BEFORE, L_START };
    case L_WS:
        return is_ws(c) ? (struct step){ A_NEXT, L_WS }
                        : (struct step){ A_END_BEFORE, L_START };
    case L_RECOVERY:
        if ((c < 0x20 && c != '\t') || c >= 0xFE || c == '[' || c == ']' ||
            c == '{' || c == '}')
            return (struct step){ A_END_BEFORE, L_START };
        return (struct step){ A_NEXT, L_RECOVERY };
    default:
        return number(s, c);
    }
}

/* Hand the collected message (or an error) to the consumer and reset. */
static void emit(struct ga_stream *st, const char *errmsg)
{
    vd_json *obj = NULL;
    char *err = NULL;

    if (errmsg) {
        err = strdup(errmsg);
    } else {
        /* token() has kept the message under MAX_TOKEN_SIZE. */
        obj = vd_json_parse_bounded(st->msg.p ? st->msg.p : "", st->msg.len, MAX_NESTING + 1,
                                    MAX_TOKEN_SIZE);
        if (!obj)
            err = strdup(vd_errmsg());
    }
    vd_buf_free(&st->msg);
    st->braces = st->brackets = 0;
    st->ntokens = 0;
    if (!obj && !err)
        err = strdup("JSON parse error");
    st->emit(st->opaque, obj, obj ? NULL : (err ? err : "out of memory"));
    free(err);
}

/* "JSON parse error, stray '<token>'" for a lexical error (the token as a
 * C string, as qemu-ga prints it: up to a NUL byte). */
static void emit_stray(struct ga_stream *st)
{
    struct vd_buf b = { 0 };
    char *s;

    vd_buf_adds(&b, "JSON parse error, stray '");
    vd_buf_add(&b, st->tok.p, strnlen(st->tok.p, st->tok.len));
    vd_buf_addc(&b, '\'');
    s = vd_buf_steal(&b);
    emit(st, s ? s : "JSON parse error");
    free(s);
}

/* One finished token: count it, collect it, emit when balanced. */
static void token(struct ga_stream *st, enum tok t)
{
    switch (t) {
    case T_LCURLY: st->braces++; break;
    case T_RCURLY: st->braces--; break;
    case T_LSQUARE: st->brackets++; break;
    case T_RSQUARE: st->brackets--; break;
    default: break;
    }
    if (st->msg.len + st->tok.len + 1 > MAX_TOKEN_SIZE) {
        emit(st, "JSON token size limit exceeded");
        return;
    }
    if (st->ntokens + 1 > MAX_TOKEN_COUNT) {
        emit(st, "JSON token count limit exceeded");
        return;
    }
    if (st->braces + st->brackets > MAX_NESTING) {
        emit(st, "JSON nesting depth limit exceeded");
        return;
    }
    if (st->msg.len)
        vd_buf_addc(&st->msg, ' ');
    vd_buf_add(&st->msg, st->tok.p, st->tok.len);
    st->ntokens++;
    if ((st->braces > 0 || st->brackets > 0) && st->braces >= 0 && st->brackets >= 0)
        return;
    emit(st, NULL);
}

/* The token type of a finished token that started in L_START. */
static enum tok classify(const struct ga_stream *st)
{
    switch (st->tok.len ? st->tok.p[0] : 0) {
    case '{': return T_LCURLY;
    case '}': return T_RCURLY;
    case '[': return T_LSQUARE;
    case ']': return T_RSQUARE;
    case ' ': case '\t': case '\r': case '\n': return T_SKIP;
    default: return T_OTHER;
    }
}

/* Finish the current token (white space and recovery bytes are dropped). */
static void finish(struct ga_stream *st, enum lex_state was)
{
    enum tok t = was == L_RECOVERY ? T_SKIP : classify(st);

    if (t != T_SKIP)
        token(st, t);
    st->tok.len = 0;
    st->state = L_START;
}

/* Feed one byte. */
static void feed_byte(struct ga_stream *st, unsigned char c)
{
    for (;;) {
        enum lex_state s = st->state;
        struct step st1 = transition(s, c);

        switch (st1.act) {
        case A_NEXT:
            vd_buf_addc(&st->tok, (char)c);
            st->state = st1.next;
            break;
        case A_END_WITH:
            vd_buf_addc(&st->tok, (char)c);
            finish(st, s);
            break;
        case A_END_BEFORE:
            finish(st, s);
            continue;            /* read c again from L_START */
        case A_FAIL:
            vd_buf_addc(&st->tok, (char)c);
            emit_stray(st);
            st->tok.len = 0;
            st->state = L_RECOVERY;
            break;
        }
        break;
    }
    if (st->tok.len > MAX_TOKEN_SIZE) {
        emit(st, "JSON token size limit exceeded");
        st->tok.len = 0;
        st->state = L_START;
    }
}

/* See stream.h. */
void ga_stream_feed(struct ga_stream *st, const void *data, size_t len)
{
    const unsigned char *p = data;

    for (size_t i = 0; i < len; i++)
        feed_byte(st, p[i]);
}

/* See stream.h. */
void ga_stream_free(struct ga_stream *st)
{
    vd_buf_free(&st->tok);
    vd_buf_free(&st->msg);
    st->state = L_START;
    st->braces = st->brackets = 0;
    st->ntokens = 0;
}
