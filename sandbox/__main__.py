from sandbox.client import main

main()
