
1.1c5"700-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01z'

running
success
echo@1.0.0
c_2