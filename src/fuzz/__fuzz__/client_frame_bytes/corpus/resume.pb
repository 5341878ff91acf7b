
1.1c1"700-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01Z1
sess_1rt_sess_1.secret*
beareralice-token