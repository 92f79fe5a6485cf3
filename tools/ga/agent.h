/* SPDX-License-Identifier: BSD-3-Clause */
/* The running agent (agent.c). */
#ifndef VD_GA_AGENT_H
#define VD_GA_AGENT_H

#include "ga.h"

/* Run until SIGTERM/SIGINT; the exit status. */
int ga_agent_run(const struct ga_config *c);

#endif
