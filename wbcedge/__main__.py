from wbcedge.cli import main

main()
